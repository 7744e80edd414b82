"""The application outbox end to end: ``cdc_bridge.client.outbox.write_event`` in a service's own
PostgreSQL transactions -> ``type: outbox_table`` adapter in the real bridge process ->
JetStream on ``<prefix>.outbox.<aggregate_type>.<event_type>``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest

from cdc_bridge.client.outbox import create_outbox_table, write_event
from tests.helpers import BridgeProcess, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.services.postgres import PostgresServer
from tests.test_relay import Stored, read_all


def fresh_db(pg: PostgresServer) -> str:
    name = f"app_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.dsn_for(name)


def outbox_msgs(url: str) -> list[Stored]:
    import asyncio

    return [m for m in asyncio.run(read_all(url)) if m.subject.startswith("cdc.outbox.")]


@pytest.mark.parametrize("on_publish", ["delete", "mark"])
def test_committed_events_arrive_once_rolled_back_never(
        tmp_path: Path, nats_server: NatsServer, postgres_server: PostgresServer,
        on_publish: str) -> None:
    dsn = fresh_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            create_outbox_table(conn)
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        committed: list[str] = []
        for i in range(30):
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (%s, 'new')", (i,))
                committed.append(write_event(conn, "order", i, "created",
                                             {"id": i, "amount": "12.50"},
                                             {"Trace-Id": f"t-{i}"}))
                if i % 3 == 0:
                    committed.append(write_event(conn, "Order Line", f"{i}-1", "added", [i]))
        rolled_back = []
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
            rolled_back.append(write_event(conn, "order", 1, "paid", {"id": 1}))
            raise RuntimeError("the service fails after writing: everything rolls back")
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [{"name": "shop-outbox", "type": "outbox_table", "dsn": dsn,
                      "poll_interval": "100ms", "batch_size": 7, "on_publish": on_publish}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        msgs = wait_for(lambda: (m := outbox_msgs(nats_server.url)) and len(m) >= 40 and m,
                        what="40 outbox events", timeout_s=60)
        # written after the bridge started: picked up by a later poll
        with psycopg.connect(dsn) as conn, conn.transaction():
            late = write_event(conn, "order", 99, "cancelled", {"id": 99})
        msgs = wait_for(lambda: (m := outbox_msgs(nats_server.url)) and len(m) >= 41 and m,
                        what="late event", timeout_s=30)
        # the routed messages count as the adapter's captured events (status, metrics)
        status = wait_for(lambda: (st := json.loads(subprocess.run(
            [sys.executable, "-m", "cdc_bridge.cli", "status", "-c", str(cfg), "--json"],
            capture_output=True, text=True, timeout=60).stdout)["adapters"][0])
            and st.get("events") == 41 and st, what="41 events in status", timeout_s=30)
        assert status["name"] == "shop-outbox"
    finally:
        assert bridge.terminate() == 0, bridge.log()
    ids = [m.headers["Nats-Msg-Id"] for m in msgs]
    assert ids == [*committed, late]  # once each, in the order they were written
    assert not set(rolled_back) & set(ids)
    first = msgs[0]
    assert first.subject == "cdc.outbox.order.created"
    ce = orjson.loads(first.data)
    assert ce["id"] == committed[0] and ce["type"] == "created"
    assert ce["subject"] == "0" and ce["aggregatetype"] == "order"
    assert ce["data"] == {"id": 0, "amount": "12.50"}
    assert first.headers["Trace-Id"] == "t-0"
    assert msgs[1].subject == "cdc.outbox.Order_Line.added"
    assert orjson.loads(msgs[1].data)["data"] == [0]
    with psycopg.connect(dsn) as conn:
        left = conn.execute("SELECT count(*), count(published_at) FROM cdc_outbox").fetchone()
    assert left == ((0, 0) if on_publish == "delete" else (41, 41))


def test_write_event_rejects_bad_input(postgres_server: PostgresServer) -> None:
    dsn = fresh_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        create_outbox_table(conn)
        with pytest.raises(ValueError):
            write_event(conn, "", 1, "created", {})
        with pytest.raises(ValueError):
            write_event(conn, "order", 1, "created", {}, {"Nats-Msg-Id": "forged"})
        with pytest.raises(ValueError):
            write_event(conn, "order", 1, "created", {}, {"X": "two\r\nlines"})
        eid = write_event(conn, "order", 1, "created", {"n": 1},
                          event_id="6b1f1c0a-d5e1-4c1e-9d3e-8f0c3b8e2a55")
        assert eid == "6b1f1c0a-d5e1-4c1e-9d3e-8f0c3b8e2a55"
