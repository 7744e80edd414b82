"""``cdc-bridge init | status | tail | replay | snapshot`` as real commands, against a real
nats-server and the bridge running as a real process on a SQLite source (sql_poll)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BridgeProcess, add_rows, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc_bridge.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def config(tmp: Path, nats_url: str, db: Path) -> Path:
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "ack_timeout": "3s"},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
                      "poll_interval": "100ms",
                      "tables": [{"name": "invoices", "incrementing_column": "id"}]}],
    })


@pytest.fixture
def running(tmp_path: Path, nats_server: NatsServer) -> Any:
    db = tmp_path / "legacy.db"
    add_rows(db, 30)
    cfg = config(tmp_path, nats_server.url, db)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    wait_for(lambda: len(stream_messages(nats_server.url)) >= 30, what="30 events")
    yield cfg, db, bridge
    if bridge.alive():
        assert bridge.terminate() == 0, bridge.log()


def test_init_creates_outbox_and_stream_and_says_so(tmp_path: Path,
                                                    nats_server: NatsServer) -> None:
    db = tmp_path / "legacy.db"
    add_rows(db, 1)
    cfg = config(tmp_path, nats_server.url, db)
    first = cli("init", "-c", str(cfg))
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "outbox: sqlite store ready" in out
    assert "stream: CDC created: subjects cdc.>" in out
    assert "adapter erp: nothing to set up for type sql_poll" in out or "adapter erp:" in out
    assert (tmp_path / "state" / "outbox.db").exists()
    assert stream_messages(nats_server.url) == []  # the stream exists, empty
    again = cli("init", "-c", str(cfg))
    assert again.returncode == 0, again.stderr
    assert "stream: CDC already up to date" in again.stdout


def test_init_reports_unreachable_nats(tmp_path: Path) -> None:
    db = tmp_path / "legacy.db"
    add_rows(db, 1)
    cfg = config(tmp_path, "nats://127.0.0.1:1", db)
    result = cli("init", "-c", str(cfg))
    assert result.returncode == 1
    assert "stream: FAILED: cannot connect to NATS" in result.stdout


def test_status_table_and_json(running: Any, nats_server: NatsServer) -> None:
    cfg, db, bridge = running
    def captured() -> bool:  # the checkpoint (outbox) and the state (1 s heartbeat)
        erp = json.loads(cli("status", "-c", str(cfg), "--json").stdout)["adapters"][0]
        return erp["checkpoint"] is not None and erp["state"] == "running"

    wait_for(captured, what="checkpoint and running state in status")
    data = json.loads(cli("status", "-c", str(cfg), "--json").stdout)
    assert data["daemon"]["running"] is True and data["daemon"]["via"] == "control"
    erp = data["adapters"][0]
    assert erp["name"] == "erp" and erp["type"] == "sql_poll" and erp["state"] == "running"
    assert "30" in json.dumps(erp["checkpoint"])
    assert erp["pending"] == 0
    table = cli("status", "-c", str(cfg))
    assert table.returncode == 0
    assert "daemon: running" in table.stdout
    assert table.stdout.splitlines()[2].split()[:4] == ["ADAPTER", "TYPE", "STATE", "PENDING"]
    assert table.stdout.splitlines()[3].split()[:3] == ["erp", "sql_poll", "running"]

    # NATS down: captured changes wait in the outbox; status counts them per adapter
    nats_server.stop()
    add_rows(db, 12)
    wait_for(lambda: json.loads(cli("status", "-c", str(cfg), "--json").stdout)
             ["adapters"][0]["pending"] == 12, what="12 pending in status", timeout_s=30)
    nats_server.start()
    assert bridge.terminate() == 0
    data = json.loads(cli("status", "-c", str(cfg), "--json").stdout)
    assert data["daemon"]["running"] is False
    assert data["adapters"][0]["state"] == "stopped"
    assert "daemon: not running" in cli("status", "-c", str(cfg)).stdout


def test_tail_raw_pretty_count_and_new(running: Any, nats_server: NatsServer) -> None:
    cfg, db, _ = running
    raw = cli("tail", "-c", str(cfg), "cdc.erp.>", "--raw", "--count", "5")
    assert raw.returncode == 0, raw.stderr
    bodies = [json.loads(line) for line in raw.stdout.splitlines()]
    assert [b["data"]["after"]["id"] for b in bodies] == [1, 2, 3, 4, 5]
    pretty = cli("tail", "-s", nats_server.url, "cdc.>", "-n", "2", "--headers")
    lines = pretty.stdout.splitlines()
    assert len(lines) == 2
    # the table's schema (docs/schemas.md) comes first, then its rows
    assert lines[0].startswith("#1 cdc._schema.erp._.invoices schema v1 (new table)")
    assert lines[1].startswith("#2 ") and "cdc.erp._.invoices.r op=r key={\"id\":1}" in lines[1]
    assert "Nats-Msg-Id=" in lines[1]
    # --new: only what arrives after the tail started (rows keep coming until it has 3)
    proc = subprocess.Popen([sys.executable, "-m", "cdc_bridge.cli", "tail", "-c", str(cfg),
                             "cdc.erp.>", "--new", "--raw", "--count", "3"],
                            stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            add_rows(db, 1)
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ids = [json.loads(line)["data"]["after"]["id"] for line in out.splitlines()]
    assert len(ids) == 3 and ids == sorted(ids) and min(ids) > 30, ids


def test_replay_to_a_new_prefix(running: Any, nats_server: NatsServer) -> None:
    cfg, _, bridge = running
    bridge.terminate()
    full = cli("replay", "-c", str(cfg), "--to", "rebuild")
    assert full.returncode == 0, full.stderr
    # 30 rows and the schema-change event of the table's version 1
    assert "replayed 31 events (stream sequences 1..31) to rebuild.>" in full.stdout
    copies = stream_messages(nats_server.url, stream="REPLAY_REBUILD", subject="rebuild.>",
                             schemas=True)
    originals = stream_messages(nats_server.url, schemas=True)
    assert [m.subject for m in copies] == [
        m.subject.replace("cdc.", "rebuild.", 1) for m in originals]
    assert [m.body for m in copies] == [m.body for m in originals]
    assert copies[0].headers["Cdc-Replay-Seq"] == "1"
    assert copies[0].headers["Nats-Msg-Id"] == originals[0].body["id"] + "@rebuild"
    # the same replay again: nothing new (ids unique per target, deduplicated)
    again = cli("replay", "-c", str(cfg), "--to", "rebuild")
    assert "replayed 0 events" in again.stdout and "31 already there" in again.stdout, \
        again.stdout
    assert len(stream_messages(nats_server.url, stream="REPLAY_REBUILD")) == 30
    # a sequence range with a new run id: exactly that range, again
    part = cli("replay", "-c", str(cfg), "--to", "rebuild", "--from-seq", "11",
               "--to-seq", "20", "--run-id", "2")
    assert "replayed 10 events (stream sequences 11..20)" in part.stdout, part.stderr
    assert len(stream_messages(nats_server.url, stream="REPLAY_REBUILD")) == 40
    # a time range: since the future -> nothing
    empty = cli("replay", "-c", str(cfg), "--to", "later", "--since", "2999-01-01T00:00:00Z")
    assert "replayed 0 events" in empty.stdout, empty.stderr
    # the source prefix is refused (the replay would feed its own stream)
    loop = cli("replay", "-c", str(cfg), "--to", "cdc.copy")
    assert loop.returncode == 2 and "captured by the source stream CDC" in loop.stderr


def test_snapshot_on_sql_poll(running: Any) -> None:
    """sql_poll: refused clearly if it lacks SupportsSnapshot; otherwise it completes."""
    from cdc_bridge.adapters.contract import SupportsSnapshot
    from cdc_bridge.adapters.registry import AdapterContext, create
    from cdc_bridge.config import load_config

    cfg, _, _ = running
    conf = load_config(cfg)
    supported = isinstance(create(conf.adapter_configs[0], AdapterContext(conf.state_dir)),
                           SupportsSnapshot)
    result = cli("snapshot", "-c", str(cfg), "erp", "invoices", "--timeout", "60")
    if supported:
        assert result.returncode == 0, result.stderr
        assert "done, 30 rows read" in result.stdout
    else:
        assert result.returncode == 2
        assert "not supported by this adapter type (sql_poll)" in result.stderr
    missing = cli("snapshot", "-c", str(cfg), "nope")
    assert missing.returncode == 2 and "no adapter named 'nope'" in missing.stderr


def test_tail_without_nats_fails_clearly_within_connect_timeout() -> None:
    from tests.services.ports import free_port

    started = time.monotonic()
    out = cli("tail", "-s", f"nats://127.0.0.1:{free_port()}", "cdc.>")
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "is not reachable" in out.stderr and "--wait" in out.stderr, out.stderr
    assert time.monotonic() - started < 20


def test_init_with_unreachable_outbox_and_nats_says_one_line_each(tmp_path: Path) -> None:
    from tests.services.ports import free_port

    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": f"nats://127.0.0.1:{free_port()}", "connect_timeout": "1s"},
        "outbox": {"url": f"postgresql://u:pw-913@127.0.0.1:{free_port()}/x"}})
    out = cli("init", "-c", str(cfg))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "outbox: FAILED: outbox database unavailable: connection failed" in out.stdout
    assert "stream: FAILED: cannot connect to NATS" in out.stdout
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert "pw-913" not in out.stderr + out.stdout


def test_outbox_command_shows_backlog_and_checkpoints(tmp_path: Path) -> None:
    from cdc_bridge.outbox.base import OutboxMessage
    from cdc_bridge.outbox.inspect import inspect_outbox
    from cdc_bridge.outbox.sqlite import SqliteStore

    cfg = write_config(tmp_path / "b.yaml", {"state_dir": str(tmp_path / "state")})
    run = [sys.executable, "-m", "cdc_bridge.cli", "outbox", "-c", str(cfg)]
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "not created yet" in out
    store = SqliteStore(tmp_path / "state" / "outbox.db")
    store.append("erp", [OutboxMessage(f"m{i}", "cdc.erp._.t.c", b"{}", None, 1_000)
                         for i in range(7)], {"pos": 7})
    store.remove(2)
    store_id = store.store_id
    store.close()
    data = json.loads(subprocess.run([*run, "--json"], capture_output=True, text=True,
                                     check=True).stdout)
    assert data["pending"] == 5 and data["store_id"] == store_id
    assert data["checkpoints"] == {"erp": {"pos": 7}}
    assert (data["first_seq"], data["last_seq"]) == (3, 7)
    assert data["size_bytes"] > 0 and data["oldest_pending_age_s"] > 0
    text = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "pending:      5" in text and "erp: {'pos': 7}" in text
    assert inspect_outbox(f"sqlite:///{tmp_path / 'state' / 'outbox.db'}")["pending"] == 5
