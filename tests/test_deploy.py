"""deploy/: every file checked by what can run here (no container engine, no cluster).

- Containerfile: multi-stage, non-root user, healthcheck, entrypoint (structure only:
  no Docker engine runs here, so the image cannot be built in CI on this machine);
- compose: YAML parse and structure (PostgreSQL with wal_level=logical, MariaDB, three
  NATS nodes with JetStream cluster config, the bridge built from the Containerfile);
- NATS configs: ``nats-server -t`` (the real binary from the venv);
- systemd unit: ``systemd-analyze verify`` (when available), warnings count as failures;
- Kubernetes: YAML parse, kinds and key fields, ``kubectl kustomize`` when available;
- the bridge configs inside compose and the ConfigMap: ``cdc-bridge validate``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cdc_bridge.daemon.embedded import nats_server_binary

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SECRETS_ENV = {"CDC_PG_PASSWORD": "x", "CDC_ERP_PASSWORD": "x", "NATS_BRIDGE_PASSWORD": "x",
               "BRIDGE_PASSWORD": "x", "READER_PASSWORD": "x", "SYS_PASSWORD": "x",
               "SERVER_NAME": "nats-1"}
#: What deploy/nats/nats-cluster.conf reads besides the passwords (compose's values).
CLUSTER_ENV = {"NATS_LISTEN": "0.0.0.0:4222", "NATS_HTTP": "0.0.0.0:8222",
               "NATS_CLUSTER_LISTEN": "0.0.0.0:6222", "NATS_STORE_DIR": "/data/jetstream",
               "NATS_ROUTES": "[nats-route://nats-1:6222, nats-route://nats-2:6222, "
                              "nats-route://nats-3:6222]"}
CLUSTER_CONF = DEPLOY / "nats" / "nats-cluster.conf"


def conf_variables(text: str) -> set[str]:
    """The ``$VARIABLES`` a NATS config file reads (comments left out)."""
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return set(re.findall(r"(?<![\"\w])\$([A-Z_]+)\b", body))  # not "$JS.API.>"


def validate_bridge_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "validate", "-c", str(path)],
                          capture_output=True, text=True, env={**os.environ, **SECRETS_ENV},
                          timeout=60)


def test_containerfile_is_multistage_non_root_with_healthcheck() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) >= 2, "multi-stage"
    assert re.search(r"^COPY --from=build ", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0:", "0")), "runs as non-root"
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD", text, re.M)
    assert "/healthz" in text
    assert re.search(r'^ENTRYPOINT \["cdc-bridge"\]', text, re.M)
    # every file the build copies exists
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in src.split():
            assert (DEPLOY.parent / item).exists(), item
    assert (DEPLOY / "healthcheck.py").exists()


def test_compose_file_structure() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services: dict[str, Any] = compose["services"]
    assert {"postgres", "mariadb", "nats-1", "nats-2", "nats-3", "bridge"} <= set(services)
    assert "wal_level=logical" in services["postgres"]["command"]
    assert services["mariadb"]["image"].startswith("mariadb:")
    names = set()
    wanted = conf_variables(CLUSTER_CONF.read_text())
    for n in (1, 2, 3):
        node = services[f"nats-{n}"]
        assert node["command"] == ["-c", "/etc/nats/nats.conf"]
        assert any("nats-cluster.conf" in v for v in node["volumes"])
        names.add(node["environment"]["SERVER_NAME"])
        # every variable the shared config file reads is set for every node
        assert wanted <= set(node["environment"]), wanted - set(node["environment"])
        routes = node["environment"]["NATS_ROUTES"]
        assert all(f"nats-route://nats-{i}:6222" in routes for i in (1, 2, 3))
    assert names == {"nats-1", "nats-2", "nats-3"}
    bridge = services["bridge"]
    assert bridge["build"]["dockerfile"] == "deploy/Containerfile"
    assert (DEPLOY / "compose" / bridge["build"]["context"] / "deploy" / "Containerfile").exists()
    assert set(bridge["depends_on"]) == {"postgres", "mariadb", "nats-1", "nats-2", "nats-3"}
    for svc in services.values():
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (DEPLOY / "compose" / host).exists(), host
    # no secret literal in the compose file: every password is a ${VAR}
    for svc in services.values():
        for key, value in (svc.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert str(value).startswith("${"), key


def test_compose_bridge_config_validates() -> None:
    result = validate_bridge_config(DEPLOY / "compose" / "bridge.yaml")
    assert result.returncode == 0, result.stderr
    assert "shop (postgres), erp (sql_poll)" in result.stdout


@pytest.mark.parametrize("name", ["nats-cluster.conf", "nats-single.conf"])
def test_nats_configs_pass_nats_server_t(name: str) -> None:
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(DEPLOY / "nats" / name)],
                            capture_output=True, text=True,
                            env={**os.environ, **SECRETS_ENV, **CLUSTER_ENV}, timeout=30)
    assert result.returncode == 0, result.stderr + result.stdout
    text = (DEPLOY / "nats" / name).read_text()
    assert "jetstream" in text and "accounts" in text


def test_nats_config_check_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("jetstream {\n  store_dir: /tmp\n")  # unclosed block
    result = subprocess.run([nats_server_binary(), "-t", "-c", str(bad)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0


def _systemd_verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / "cdc-bridge.service").read_text()
    exe = Path(sys.executable).parent / "cdc-bridge"
    assert exe.exists()
    # verify needs the executable to exist: point it at this checkout's
    unit = tmp_path / "cdc-bridge.service"
    unit.write_text(text.replace("/opt/cdc-bridge/bin/cdc-bridge", str(exe)))
    result = _systemd_verify(unit)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("[Service]", "[Service]\nRestartz=always"))
    assert "Unknown key" in _systemd_verify(broken).stderr  # the check can fail
    assert "RestartPreventExitStatus=2" in text and "User=cdc-bridge" in text


def test_cluster_config_is_the_one_the_tests_start() -> None:
    """tests/services/nats_cluster.py starts deploy/nats/nats-cluster.conf itself, setting
    every variable the file reads; only the passwords are secrets."""
    from tests.services import nats_cluster

    assert nats_cluster.CONFIG == CLUSTER_CONF
    node = nats_cluster.ClusterNode("n1", Path("/nonexistent"))
    node.routes = [1, 2, 3]
    env = node.env()
    assert conf_variables(CLUSTER_CONF.read_text()) <= set(env)
    assert set(nats_cluster.PASSWORDS) | {"SERVER_NAME", *CLUSTER_ENV} == \
        conf_variables(CLUSTER_CONF.read_text())
    # the config keeps every other writer out of the bridge's stream (cdc.>)
    text = CLUSTER_CONF.read_text()
    reader = text[text.index("{user: reader"):text.index("SYS:")]
    publish = reader[reader.index("publish"):reader.index("subscribe")]
    assert not any(p.startswith('"cdc.') for p in re.findall(r'"[^"]+"', publish))


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_kubernetes_manifests() -> None:
    docs = k8s_documents()
    by_kind = {d["kind"]: d for d in docs
               if d["metadata"]["labels"]["app.kubernetes.io/name"] == "cdc-bridge"}
    assert {"Deployment", "ConfigMap", "Secret", "Service"} <= set(by_kind)
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
    dep = by_kind["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert dep["spec"]["selector"]["matchLabels"].items() <= \
        dep["spec"]["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["envFrom"][0]["secretRef"]["name"] == by_kind["Secret"]["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    svc = by_kind["Service"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    # the Secret provides every ${VAR} the ConfigMap's bridge config uses
    bridge_yaml = by_kind["ConfigMap"]["data"]["bridge.yaml"]
    used = set(re.findall(r"\$\{([A-Z_]+)\}", bridge_yaml))
    assert used and used <= set(by_kind["Secret"]["stringData"])


def test_kubernetes_nats_cluster_uses_the_shared_config() -> None:
    docs = [d for d in k8s_documents()
            if d["metadata"]["labels"]["app.kubernetes.io/name"] == "nats"]
    by_kind = {d["kind"]: d for d in docs}
    assert {"ConfigMap", "Service", "StatefulSet"} <= set(by_kind)
    # the ConfigMap holds deploy/nats/nats-cluster.conf verbatim
    assert by_kind["ConfigMap"]["data"]["nats.conf"] == CLUSTER_CONF.read_text()
    sts = by_kind["StatefulSet"]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["serviceName"] == "nats"
    assert by_kind["Service"]["spec"]["clusterIP"] == "None"  # headless: nats-N.nats
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["-c", "/etc/nats/nats.conf"]
    env = {e["name"]: e for e in container["env"]}
    assert conf_variables(CLUSTER_CONF.read_text()) <= set(env)
    assert env["SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    routes = env["NATS_ROUTES"]["value"]
    assert all(f"nats-route://nats-{i}.nats:6222" in routes for i in range(3))
    secret = next(d for d in k8s_documents() if d["kind"] == "Secret")
    for e in env.values():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    # the bridge's ConfigMap reaches these pods, with 3 replicas
    bridge_cm = next(d for d in k8s_documents() if d["kind"] == "ConfigMap"
                     and "bridge.yaml" in d["data"])
    bridge = yaml.safe_load(bridge_cm["data"]["bridge.yaml"])
    assert bridge["nats"]["url"] == [f"nats://nats-{i}.nats:4222" for i in range(3)]
    assert bridge["nats"]["replicas"] == 3


def test_configmap_bridge_config_validates(tmp_path: Path) -> None:
    cm = next(d for d in k8s_documents() if d["kind"] == "ConfigMap" and "bridge.yaml" in d["data"])
    path = tmp_path / "bridge.yaml"
    path.write_text(cm["data"]["bridge.yaml"])
    result = validate_bridge_config(path)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kustomize_builds() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(result.stdout) if d}
    assert {"Deployment", "ConfigMap", "Service", "PersistentVolumeClaim",
            "StatefulSet"} <= kinds
    # applying again must never overwrite the Secret created out of band
    assert "Secret" not in kinds
    monitored = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "monitoring")],
                               capture_output=True, text=True, timeout=60)
    assert monitored.returncode == 0, monitored.stderr
    docs = [d for d in yaml.safe_load_all(monitored.stdout) if d]
    assert {d["kind"] for d in docs} == kinds | {"ServiceMonitor"}


def test_service_monitor_scrapes_the_metrics_service() -> None:
    monitor = yaml.safe_load((DEPLOY / "monitoring" / "servicemonitor.yaml").read_text())
    service = next(d for d in k8s_documents() if d["kind"] == "Service"
                   and d["metadata"]["name"] == "cdc-bridge-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["http"]
    assert "http" in port_names and monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert not any("secret" in r for r in kustomization["resources"])


# -- group mode (docs/group.md) -----------------------------------------------------------


def test_group_configs_validate_with_group_mode_on(tmp_path: Path) -> None:
    cm = yaml.safe_load((DEPLOY / "k8s-group" / "configmap.yaml").read_text())
    k8s = tmp_path / "k8s-group.yaml"
    k8s.write_text(cm["data"]["bridge.yaml"])
    for path in (DEPLOY / "compose" / "bridge.group.yaml", k8s):
        result = subprocess.run(
            [sys.executable, "-m", "cdc_bridge.cli", "validate", "-c", str(path)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, **SECRETS_ENV, "CDC_OUTBOX_PASSWORD": "x"})
        assert result.returncode == 0, result.stderr
        config = yaml.safe_load(path.read_text())
        assert config["group"]["enabled"] is True
        assert config["outbox"]["url"].startswith("postgresql://")
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())
    assert "CDC_OUTBOX_PASSWORD" in secret["stringData"]


def test_group_overlay_runs_three_members_with_a_disruption_budget() -> None:
    dep = yaml.safe_load((DEPLOY / "k8s-group" / "deployment.yaml").read_text())
    pdb = yaml.safe_load((DEPLOY / "k8s-group" / "pdb.yaml").read_text())
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert pdb["kind"] == "PodDisruptionBudget"
    assert 1 <= pdb["spec"]["minAvailable"] < dep["spec"]["replicas"]
    assert pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "cdc-bridge"}
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.group.yaml").read_text())
    bridges = [s for s in compose["services"].values()
               if any("bridge.group.yaml" in v for v in s.get("volumes", []))]
    assert len(bridges) == 2


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_group_overlay_builds() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "k8s-group")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert "PodDisruptionBudget" in kinds and "PersistentVolumeClaim" not in kinds
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 3
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "bridge.yaml" in d["data"])
    assert yaml.safe_load(cm["data"]["bridge.yaml"])["group"]["enabled"] is True
