"""The operations endpoint over real HTTP, on the bridge running as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import BridgeProcess, add_rows, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")
    except (urllib.error.URLError, OSError):
        return 0, b"", ""


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def http_config(tmp: Path, nats_url: str, db: Path, port: int) -> Path:
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "ack_timeout": "3s"},
        "http": {"enabled": True, "host": "127.0.0.1", "port": port},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
                      "poll_interval": "100ms",
                      "tables": [{"name": "invoices", "incrementing_column": "id"}]}],
    })


def test_healthz_readyz_metrics_status(tmp_path: Path, nats_server: NatsServer) -> None:
    db = tmp_path / "legacy.db"
    add_rows(db, 50)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    bridge = BridgeProcess(http_config(tmp_path, nats_server.url, db, port),
                           tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_for(lambda: get(base + "/healthz")[0] == 200, what="/healthz", timeout_s=30)
        wait_for(lambda: get(base + "/readyz")[0] == 200, what="/readyz 200", timeout_s=30)
        ready = json.loads(get(base + "/readyz")[1])
        assert ready["ready"] is True and ready["adapters"] == {"erp": "running"}

        def captured() -> dict[Any, float] | None:
            status, body, ctype = get(base + "/metrics")
            assert status == 200 and ctype.startswith("text/plain")
            m = samples(body)
            key = ("cdc_events_captured_total", (("adapter", "erp"), ("table", "invoices")))
            return m if m.get(key) == 50 else None

        m = wait_for(captured, what="50 captured in /metrics", timeout_s=30)
        assert m[("cdc_adapter_up", (("adapter", "erp"),))] == 1.0
        # labelled series exist from the start, at 0, before anything happened to them
        assert m[("cdc_dead_letters_total", (("adapter", "erp"), ("stage", "publish")))] == 0
        assert m[("cdc_adapter_restarts_total", (("adapter", "erp"),))] == 0
        assert ("cdc_snapshot_rows_done", (("adapter", "erp"),)) in m
        lag = ("cdc_source_lag_seconds", (("adapter", "erp"),))  # one unit per metric
        wait_for(lambda: lag in samples(get(base + "/metrics")[1]), what="the lag gauge",
                 timeout_s=30)
        assert not any(name.endswith("_created") for name, _ in m)
        assert ("cdc_outbox_pending", ()) in m
        assert ("cdc_outbox_oldest_pending_age_seconds", ()) in m
        assert m[("cdc_nats_connected", ())] == 1.0
        status = json.loads(get(base + "/status")[1])
        assert status["adapters"]["erp"]["events"] == 50
        assert status["adapters"]["erp"]["state"] == "running"
        assert bridge.proc is not None and status["pid"] == bridge.proc.pid
        text = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "status", "-c",
                               str(tmp_path / "bridge.yaml")], capture_output=True, text=True,
                              timeout=60).stdout
        assert f"daemon: running (pid {bridge.proc.pid}, via http)" in text, text

        # NATS down: not ready (503, says why); back up: ready again
        nats_server.stop()
        wait_for(lambda: get(base + "/readyz")[0] == 503, what="/readyz 503", timeout_s=30)
        body = json.loads(get(base + "/readyz")[1])
        assert body["ready"] is False and body["nats"] == "disconnected"
        assert get(base + "/healthz")[0] == 200  # alive all the same
        nats_server.start()
        wait_for(lambda: get(base + "/readyz")[0] == 200, what="ready after NATS is back",
                 timeout_s=60)
    finally:
        code = bridge.terminate()
    assert code == 0, bridge.log()
    assert get(base + "/healthz")[0] == 0  # the endpoint goes away with the daemon
    log = bridge.log()
    assert "HTTP endpoint on http://127.0.0.1:" in log
    assert "adapter erp: starting -> running" in log


def test_status_heartbeat_and_files_keep_secrets(tmp_path: Path, nats_server: NatsServer) -> None:
    """A password in the NATS URL appears in neither /status nor the heartbeat in
    control.db; state_dir is 0700 and the daemon's files in it 0600."""
    db = tmp_path / "legacy.db"
    add_rows(db, 5)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    secret_url = nats_server.url.replace("nats://", "nats://cdc:s3cret-pw@")
    cfg = http_config(tmp_path, secret_url, db, port)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    state = tmp_path / "state"
    try:
        wait_for(lambda: get(base + "/readyz")[0] == 200, what="/readyz 200", timeout_s=30)
        status = get(base + "/status")[1].decode()
        assert "s3cret-pw" not in status and "cdc:***@" in status, status
        wait_for(lambda: (state / "control.db").exists(), what="control file")
        for path in state.rglob("*"):
            if path.is_file():
                assert b"s3cret-pw" not in path.read_bytes(), path
    finally:
        assert bridge.terminate() == 0, bridge.log()
    assert "s3cret-pw" not in bridge.log()
    assert state.stat().st_mode & 0o777 == 0o700
    files = [p for p in state.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o077 == 0 for p in files), \
        [(p.name, oct(p.stat().st_mode)) for p in files]
