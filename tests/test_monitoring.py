"""deploy/monitoring: Prometheus alert rules checked and unit-tested by ``promtool``
(Debian's prometheus package, installed by scripts/setup.sh), and every metric the
rules and the Grafana dashboard query exists in the bridge's registry."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from cdc_bridge import metrics

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: run bash scripts/setup.sh --with-test-servers"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60,
                          cwd=MONITORING)


def test_alert_rules_check_and_their_unit_tests_pass() -> None:
    checked = promtool("check", "rules", "alerts.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yaml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    alerts = {r["alert"] for g in yaml.safe_load((MONITORING / "alerts.yaml").read_text())
              ["groups"] for r in g["rules"]}
    assert {"CdcAdapterDown", "CdcSourceLagSeconds", "CdcOutboxOldestPending",
            "CdcDeadLetters", "CdcNatsDisconnected"} <= alerts


def test_promtool_catches_a_broken_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(\n")
    assert promtool("check", "rules", str(bad)).returncode != 0


def exposed_names() -> set[str]:
    """Every series name the registry can expose (counters ``_total``, histograms
    ``_bucket``/``_sum``/``_count``), whether or not a labelled child exists yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",), "info": ("_info",)}
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def queried_names(text: str) -> set[str]:
    return set(re.findall(r"\bcdc_[a-z_]+\b", text))


def test_dashboard_and_rules_query_metrics_that_exist() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    rules = (MONITORING / "alerts.yaml").read_text()
    used = queried_names("\n".join(exprs)) | queried_names(rules)
    missing = used - exposed_names()
    assert not missing, f"queried but not exposed: {sorted(missing)}"
    assert queried_names("cdc_no_such_metric") - exposed_names()  # the check can fail
