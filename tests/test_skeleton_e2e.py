"""End to end on real processes: SQLite source -> bridge -> real nats-server JetStream.

Covers the walking skeleton's guarantees: exactly-once arrival with the right subject,
CloudEvents fields and Nats-Msg-Id; kill -9 mid-stream; NATS outage mid-stream.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cdc_bridge.kernel.events import event_id
from tests.helpers import BridgeProcess, StoredMessage, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer


def make_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT, "
                     "amount NUMERIC, note TEXT)")


def insert_rows(path: Path, start: int, count: int, per_tx: int = 50,
                pause_s: float = 0.0) -> None:
    conn = sqlite3.connect(path, timeout=30)
    try:
        for base in range(start, start + count, per_tx):
            with conn:
                conn.executemany(
                    "INSERT INTO invoices (id, customer, amount, note) VALUES (?, ?, ?, ?)",
                    [(i, f"cust-{i % 17}", f"{i}.25", "é✓") for i in
                     range(base, min(base + per_tx, start + count))])
            if pause_s:
                time.sleep(pause_s)
    finally:
        conn.close()


def bridge_config(tmp: Path, nats_url: str, db: Path, **adapter: Any) -> Path:
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc",
                 "ack_timeout": "3s"},
        "adapters": [{
            "name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
            "poll_interval": "100ms", "batch_size": 500,
            "tables": [{"name": "invoices", "incrementing_column": "id"}],
            **adapter,
        }],
    })


def change_ids(msgs: list[StoredMessage]) -> list[int]:
    return [m.body["data"]["after"]["id"] for m in msgs if m.subject.startswith("cdc.erp.")]


def assert_exactly_once(msgs: list[StoredMessage], expected: range) -> None:
    ids = change_ids(msgs)
    dupes = len(ids) - len(set(ids))
    missing = set(expected) - set(ids)
    assert dupes == 0, f"{dupes} duplicates in the stream"
    assert not missing, f"{len(missing)} changes missing, e.g. {sorted(missing)[:5]}"
    assert ids == sorted(ids), "per-table order not kept"


def test_rows_arrive_once_with_cloudevents_fields(tmp_path: Path, nats_server: NatsServer):
    db = tmp_path / "legacy.db"
    make_source(db)
    insert_rows(db, 1, 1200)
    bridge = BridgeProcess(bridge_config(tmp_path, nats_server.url, db), tmp_path / "bridge.log")
    bridge.start()
    try:
        msgs = wait_for(lambda: (m := stream_messages(nats_server.url)) and len(m) >= 1200 and m,
                        what="1200 events", timeout_s=60)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    assert_exactly_once(msgs, range(1, 1201))
    first = msgs[0]
    # rows present before the first start arrive as the initial snapshot (op r)
    assert first.subject == "cdc.erp._.invoices.r"
    ce = first.body
    assert ce["specversion"] == "1.0"
    assert ce["type"] == "io.cdc-bridge.read"
    assert ce["source"] == "/cdc-bridge/erp"
    assert ce["datacontenttype"] == "application/json"
    assert ce["id"] == event_id("erp", "invoices:1", 0)
    assert first.headers["Nats-Msg-Id"] == ce["id"]
    data = ce["data"]
    assert data["op"] == "r"
    assert data["before"] is None
    assert data["key"] == {"id": 1}
    after = dict(data["after"])
    assert Decimal(after.pop("amount")) == Decimal("1.25")  # exact decimal, as a string
    assert after == {"id": 1, "customer": "cust-1", "note": "é✓"}
    assert data["source"]["adapter"] == "erp"
    assert data["source"]["table"] == "invoices"
    assert "stopped:" in bridge.log()


def test_kill_9_mid_stream_then_restart(tmp_path: Path, nats_server: NatsServer):
    db = tmp_path / "legacy.db"
    make_source(db)
    total = 6000
    writer = threading.Thread(target=insert_rows, args=(db, 1, total, 100, 0.02))
    bridge = BridgeProcess(bridge_config(tmp_path, nats_server.url, db), tmp_path / "bridge.log")
    writer.start()
    bridge.start()
    kills = 0
    try:
        for _ in range(3):
            time.sleep(1.5)
            bridge.kill9()
            kills += 1
            bridge.start()
        writer.join()
        msgs = wait_for(lambda: (m := stream_messages(nats_server.url)) and
                        len(set(change_ids(m))) >= total and m, what="all events", timeout_s=90)
    finally:
        writer.join()
        if bridge.alive():
            bridge.terminate()
    assert kills == 3
    assert_exactly_once(msgs, range(1, total + 1))


def test_nats_outage_mid_stream(tmp_path: Path, nats_server: NatsServer):
    db = tmp_path / "legacy.db"
    make_source(db)
    bridge = BridgeProcess(bridge_config(tmp_path, nats_server.url, db), tmp_path / "bridge.log")
    bridge.start()
    try:
        insert_rows(db, 1, 1000)
        wait_for(lambda: len(stream_messages(nats_server.url)) >= 1000, what="first 1000")
        nats_server.stop()
        insert_rows(db, 1001, 2000, pause_s=0.01)
        # captured into the outbox while NATS is down
        state_db = tmp_path / "state" / "outbox.db"
        wait_for(lambda: _pending(state_db) >= 1500, what="capture during outage", timeout_s=30)
        time.sleep(2)
        nats_server.start()
        msgs = wait_for(lambda: (m := stream_messages(nats_server.url)) and
                        len(m) >= 3000 and m, what="drain after outage", timeout_s=90)
        wait_for(lambda: _pending(state_db) == 0, what="outbox drained")
    finally:
        code = bridge.terminate()
    assert code == 0, bridge.log()
    assert_exactly_once(msgs, range(1, 3001))
    assert "JetStream recovered" in bridge.log() or "reconnected" in bridge.log()


def _pending(state_db: Path) -> int:
    with sqlite3.connect(state_db, timeout=10) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


@pytest.mark.parametrize("n", [1])
def test_second_start_resumes_from_checkpoint(tmp_path: Path, nats_server: NatsServer, n: int):
    db = tmp_path / "legacy.db"
    make_source(db)
    insert_rows(db, 1, 300)
    cfg = bridge_config(tmp_path, nats_server.url, db)
    for round_ in range(2):
        bridge = BridgeProcess(cfg, tmp_path / f"bridge{round_}.log")
        bridge.start()
        wait_for(lambda r=round_: len(stream_messages(nats_server.url)) >= 300 * (r + 1),
                 what="round")
        assert bridge.terminate() == 0
        insert_rows(db, 301 + 300 * round_, 300)
    bridge = BridgeProcess(cfg, tmp_path / "bridge_last.log")
    bridge.start()
    msgs = wait_for(lambda: (m := stream_messages(nats_server.url)) and len(m) >= 900 and m,
                    what="all")
    bridge.terminate()
    assert_exactly_once(msgs, range(1, 901))
    # a restart republishes nothing: the stream holds each change once, not via dedup
    assert len(msgs) == 900
