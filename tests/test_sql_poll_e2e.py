"""sql_poll end to end: MariaDB -> bridge process -> real nats-server JetStream.

A MariaDB database with a ``timestamp+incrementing`` table and a ``diff`` table keeps
changing (inserts, updates, deletes) while the bridge is killed with ``kill -9`` in the
middle of its snapshot and diff passes. Replaying the stream (r/c/u set a key's row, d
removes it) must rebuild exactly the tables' final contents, with each change once.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers import BridgeProcess, StoredMessage, stream_messages, wait_for, write_config
from tests.services.mariadb import MariaDBServer
from tests.services.nats_server import NatsServer

ROWS = 4000


@pytest.fixture
def maria_db(mariadb_server: MariaDBServer) -> Iterator[str]:
    name = "e2e_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(mariadb_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    url = mariadb_server.url.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE {name}"))
        admin.dispose()


def _setup(engine: sa.Engine) -> None:
    with engine.begin() as c:
        for t in ("invoices", "customers"):
            c.execute(sa.text(f"CREATE TABLE {t} (id int PRIMARY KEY, note varchar(40), "
                              "updated_at datetime(6) NOT NULL, KEY (updated_at, id))"))
        now = dt.datetime(2024, 1, 1)
        for t in ("invoices", "customers"):
            c.execute(sa.text(f"INSERT INTO {t} VALUES (:i, :n, :u)"),
                      [{"i": i, "n": f"n{i}", "u": now} for i in range(1, ROWS + 1)])


def _mutate(engine: sa.Engine, stop: threading.Event) -> None:
    rng = random.Random(7)
    next_id = ROWS + 1
    while not stop.is_set():
        stamp = dt.datetime.now()
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO invoices VALUES (:i, 'new', :u)"),
                      {"i": next_id, "u": stamp})
            c.execute(sa.text("UPDATE invoices SET note = :n, updated_at = :u WHERE id = :i"),
                      {"i": rng.randint(1, ROWS), "n": f"upd{rng.random():.6f}", "u": stamp})
            c.execute(sa.text("INSERT INTO customers VALUES (:i, 'new', :u)"),
                      {"i": next_id, "u": stamp})
            c.execute(sa.text("UPDATE customers SET note = :n WHERE id = :i"),
                      {"i": rng.randint(1, ROWS), "n": f"upd{rng.random():.6f}"})
            c.execute(sa.text("DELETE FROM customers WHERE id = :i"), {"i": rng.randint(1, ROWS)})
        next_id += 1
        time.sleep(0.02)


def _replay(msgs: list[StoredMessage], table: str) -> dict[int, str]:
    state: dict[int, str] = {}
    for m in msgs:
        data = m.body["data"]
        if data["source"]["table"] != table:
            continue
        key = data["key"]["id"]
        if data["op"] == "d":
            state.pop(key, None)
        else:
            state[key] = data["after"]["note"]
    return state


def _table(engine: sa.Engine, table: str) -> dict[int, str]:
    with engine.connect() as c:
        return {int(r[0]): str(r[1]) for r in c.execute(sa.text(f"SELECT id, note FROM {table}"))}


def _config(tmp: Path, nats_url: str, url: str) -> Path:
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc", "ack_timeout": "3s"},
        "adapters": [{
            "name": "erp", "type": "sql_poll", "url": url, "poll_interval": "200ms",
            "batch_size": 250, "lag_window": "3s", "progress_interval": "1s",
            "tables": [
                {"name": "invoices", "mode": "timestamp+incrementing",
                 "timestamp_column": "updated_at", "incrementing_column": "id"},
                {"name": "customers", "mode": "diff"},
            ],
        }],
    })


def test_kill_9_during_snapshot_and_diff_passes(tmp_path: Path, nats_server: NatsServer,
                                                maria_db: str):
    engine = sa.create_engine(maria_db)
    _setup(engine)
    stop = threading.Event()
    writer = threading.Thread(target=_mutate, args=(engine, stop))
    bridge = BridgeProcess(_config(tmp_path, nats_server.url, maria_db), tmp_path / "bridge.log")
    bridge.start()
    writer.start()
    try:
        for delay in (1.5, 2.0, 2.5):
            time.sleep(delay)
            bridge.kill9()
            bridge.start()
        time.sleep(1.0)
        stop.set()
        writer.join()
        expected = {t: _table(engine, t) for t in ("invoices", "customers")}

        def converged() -> list[StoredMessage] | None:
            msgs = stream_messages(nats_server.url)
            ok = all(_replay(msgs, t) == expected[t] for t in expected)
            return msgs if ok else None

        wait_for(converged, timeout_s=60, interval_s=1.0, what="stream == tables")
        # once more after the snapshots, so every op is sure to occur whatever the timing
        with engine.begin() as c:
            c.execute(sa.text("DELETE FROM customers WHERE id <= 20"))
            c.execute(sa.text("UPDATE customers SET note = 'last' WHERE id BETWEEN 21 AND 30"))
            c.execute(sa.text("INSERT INTO customers VALUES (100000, 'last', NOW(6))"))
        expected = {t: _table(engine, t) for t in ("invoices", "customers")}
        msgs = wait_for(converged, timeout_s=60, interval_s=1.0, what="stream == tables")
    finally:
        stop.set()
        writer.join()
        if bridge.alive():
            assert bridge.terminate() == 0, bridge.log()
        engine.dispose()
    positions = [m.body["data"]["source"]["position"] for m in msgs]
    assert len(positions) == len(set(positions)), "a change reached the stream twice"
    assert all(m.headers["Nats-Msg-Id"] == m.body["id"] for m in msgs)
    ops = {m.body["data"]["op"] for m in msgs}
    assert {"r", "c", "u", "d"} <= ops
    subjects = {m.subject.rsplit(".", 1)[0] for m in msgs}
    assert subjects == {"cdc.erp._.invoices", "cdc.erp._.customers"}
    log = bridge.log()
    assert "snapshot" in log and "diff pass" in log
