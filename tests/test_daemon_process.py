"""The daemon as a real process: fatal errors, log formats, and no secret in any output."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from cdc_bridge.daemon.embedded import nats_server_binary
from tests.helpers import BridgeProcess, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port, wait_closed, wait_listening

DB_SECRET = "Db-S3cret-pw_42"
NATS_SECRET = "Nats-S3cret-pw_77"


def test_fatal_source_error_exits_non_zero_with_clear_message(
        tmp_path: Path, nats_server: NatsServer) -> None:
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
                      "tables": [{"name": "no_such_table", "incrementing_column": "id"}]}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    assert bridge.proc is not None
    code = bridge.proc.wait(60)
    log = bridge.log()
    assert code == 1, log
    assert "no_such_table" in log
    assert "fatal" in log
    assert "stopped:" in log


def _run_bridge(cfg: Path, log_path: Path, env: dict[str, str],
                *args: str) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "cdc_bridge.cli", "run", "-c", str(cfg), *args],
            stdout=subprocess.PIPE, stderr=log, env={**os.environ, **env},
            start_new_session=True)


def _secret_config(tmp: Path, nats_port: int, name: str) -> Path:
    closed = free_port()  # nothing listens: the source connection fails
    return write_config(tmp / name, {
        "state_dir": str(tmp / "state"),
        "nats": {"url": f"nats://127.0.0.1:{nats_port}", "user": "bridge",
                 "password": "${NATS_PASSWORD}", "connect_timeout": "1s"},
        "adapters": [{"name": "erp", "type": "sql_poll",
                      "url": f"mysql+pymysql://app:{DB_SECRET}@127.0.0.1:{closed}/erp",
                      "poll_interval": "200ms",
                      "tables": [{"name": "invoices", "incrementing_column": "id"}]}],
    })


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert DB_SECRET not in text
        assert NATS_SECRET not in text


def test_json_logs_and_no_secret_anywhere(tmp_path: Path) -> None:
    """A DB password in the source URL and a NATS password never reach logs, status or
    error output, while the source connection keeps failing (closed port) and when NATS
    refuses the password."""
    nats_port = free_port()
    nats_proc = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(nats_port), "-js",
         "-sd", str(tmp_path / "nats"), "--user", "bridge", "--pass", NATS_SECRET],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env = {"NATS_PASSWORD": NATS_SECRET}
    try:
        wait_listening(nats_port)
        cfg = _secret_config(tmp_path, nats_port, "bridge.yaml")
        log_path = tmp_path / "bridge.log"
        proc = _run_bridge(cfg, log_path, env, "--log-format", "json")
        wait_for(lambda: log_path.read_text().count("retrying in") >= 3,
                 what="several failed source connections", timeout_s=60)
        time.sleep(1.0)
        status = subprocess.run(
            [sys.executable, "-m", "cdc_bridge.cli", "status", "-c", str(cfg), "--json"],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        stdout = proc.stdout.read().decode() if proc.stdout else ""

        # the wrong NATS password: refused, fatal, and still no secret in the output
        wrong_log = tmp_path / "wrong.log"
        wrong = _run_bridge(cfg, wrong_log, {"NATS_PASSWORD": DB_SECRET + "x"})
        wrong_code = wrong.wait(60)
    finally:
        nats_proc.terminate()
        nats_proc.wait(15)
        wait_closed(nats_port)
    log = log_path.read_text()
    assert code == 0, log
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in lines)
    assert any("adapter erp" in e["msg"] and "retrying" in e["msg"] for e in lines), log
    assert status.returncode == 0, status.stderr
    erp = json.loads(status.stdout)["adapters"][0]
    assert erp["state"] == "retrying"
    assert erp["last_error"]
    _assert_no_secret(log, stdout, status.stdout, status.stderr)
    wrong_text = wrong_log.read_text()
    assert wrong_code == 1, wrong_text
    assert "NATS" in wrong_text
    assert DB_SECRET not in wrong_text  # (the wrong password contains it, masked whole)


def test_json_log_lines_carry_adapter_and_table_fields(
        tmp_path: Path, nats_server: NatsServer) -> None:
    """``log.format: json``: an adapter's lines (from its task and from the threads it
    polls in) carry ``adapter`` and, per table, ``table`` as keys of their own."""
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, v TEXT)")
        conn.executemany("INSERT INTO invoices VALUES (?, ?)", [(i, "x") for i in range(5)])
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"), "nats": {"url": nats_server.url},
        "log": {"format": "json"},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
                      "poll_interval": "100ms",
                      "tables": [{"name": "invoices", "incrementing_column": "id"}]}]})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_for(lambda: "snapshot done" in bridge.log(), what="the snapshot")
    finally:
        assert bridge.terminate() == 0, bridge.log()
    lines = [json.loads(line) for line in bridge.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(e) for e in lines)
    done = next(e for e in lines if "snapshot done" in e["msg"])
    assert done["adapter"] == "erp" and done["table"] == "invoices", done
    state = next(e for e in lines if "adapter erp: starting -> running" in e["msg"])
    assert state.get("adapter") == "erp", state
    daemon = next(e for e in lines if e["msg"].startswith("cdc-bridge running"))
    assert "adapter" not in daemon  # the daemon's own lines name no adapter
