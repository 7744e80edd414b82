"""sql_poll on MariaDB: a column added and one dropped while writers run, seen without a
restart of the bridge.

Two writer threads insert rows and update seed rows (each change distinct, so each must
arrive) while the table gains ``currency`` and then loses ``note``. The stream must hold
schema versions 1 -> 2 -> 3, each schema-change event before the first row of its
version, every row's ``after`` with exactly its version's columns, every written change
(and the ``currency`` of every row written with one), no truncate and no restart.
"""

from __future__ import annotations

import decimal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.helpers import BridgeProcess, StoredMessage, stream_messages, wait_for, write_config
from tests.services.mariadb import MariaDBServer
from tests.services.nats_server import NatsServer

pytestmark = pytest.mark.service

SEED = 40


@pytest.fixture
def maria_db(mariadb_server: MariaDBServer) -> Iterator[str]:
    name = "shape_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(mariadb_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield mariadb_server.url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE {name}"))
        admin.dispose()


class Writers:
    """Writer threads; ``phase`` 1: (amount, note), 2: + currency, 3: note dropped."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.phase = 1
        self.stop = threading.Event()
        self.lock = threading.Lock()
        #: id -> (amount, currency or None) of every insert; seed id -> amount of updates.
        self.inserted: dict[int, tuple[decimal.Decimal, str | None]] = {}
        self.updated: dict[int, decimal.Decimal] = {}
        self.errors: list[str] = []

    def run(self, k: int) -> None:
        seeds = list(range(1 + k, SEED + 1, 2))
        n = 0
        while not self.stop.is_set():
            n += 1
            phase = self.phase
            amount = decimal.Decimal(f"{k}{n}.25")
            cols, vals = ["amount", "updated_at"], [":a", "NOW(6)"]
            if phase < 3:
                cols.append("note")
                vals.append("'w'")
            if phase >= 2:
                cols.append("currency")
                vals.append("'EUR'")
            try:
                with self.engine.begin() as c:
                    new_id = c.execute(sa.text(
                        f"INSERT INTO invoices ({', '.join(cols)}) VALUES ({', '.join(vals)})"),
                        {"a": amount}).lastrowid
                    seed = seeds.pop() if seeds else None
                    if seed is not None:
                        c.execute(sa.text("UPDATE invoices SET amount = :a, updated_at = "
                                          "NOW(6) WHERE id = :i"), {"a": amount + 1, "i": seed})
            except sa.exc.DBAPIError as e:  # the ALTER raced this writer's phase: again
                if seed is not None:
                    seeds.append(seed)
                if "Unknown column" not in str(e.orig) and "definition" not in str(e.orig):
                    self.errors.append(str(e.orig))
                time.sleep(0.01)
                continue
            with self.lock:
                self.inserted[int(new_id)] = (amount, "EUR" if phase >= 2 else None)
                if seed is not None:
                    self.updated[seed] = amount + 1
            time.sleep(0.005)


def _rows(msgs: list[StoredMessage]) -> list[StoredMessage]:
    return [m for m in msgs if m.subject.startswith("cdc.erp._.invoices.")]


def _arrived(msgs: list[StoredMessage], w: Writers) -> bool:
    last: dict[int, dict[str, Any]] = {}
    for m in _rows(msgs):
        data = m.body["data"]
        if data["after"] is not None:
            last[data["key"]["id"]] = data["after"]
    with w.lock:
        inserted, updated = dict(w.inserted), dict(w.updated)
    return (all(i in last for i in inserted)
            and all(last.get(i, {}).get("amount") == str(a) for i, a in updated.items()))


def test_columns_added_and_dropped_while_writing(tmp_path: Path, nats_server: NatsServer,
                                                 maria_db: str) -> None:
    engine = sa.create_engine(maria_db, isolation_level="READ COMMITTED")
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE invoices (id int AUTO_INCREMENT PRIMARY KEY, "
                          "amount decimal(10,2) NOT NULL, note varchar(40), updated_at "
                          "datetime(6) NOT NULL, KEY (updated_at, id))"))
        c.execute(sa.text("INSERT INTO invoices (amount, note, updated_at) VALUES "
                          "(:a, 'seed', '2024-01-01')"),
                  [{"a": decimal.Decimal(i)} for i in range(1, SEED + 1)])
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": maria_db,
                      "poll_interval": "100ms", "lag_window": "2s",
                      "tables": [{"name": "invoices", "mode": "timestamp+incrementing",
                                  "timestamp_column": "updated_at",
                                  "incrementing_column": "id"}]}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    w = Writers(engine)
    threads = [threading.Thread(target=w.run, args=(k,)) for k in (0, 1)]
    try:
        wait_for(lambda: len(_rows(stream_messages(nats_server.url))) >= SEED, 60,
                 what="the snapshot")
        pid = bridge.proc.pid if bridge.proc else None
        for t in threads:
            t.start()
        time.sleep(0.8)
        with engine.begin() as c:
            c.execute(sa.text("ALTER TABLE invoices ADD COLUMN currency varchar(3)"))
        w.phase = 2
        time.sleep(0.8)
        with engine.begin() as c:
            c.execute(sa.text("ALTER TABLE invoices DROP COLUMN note"))
        w.phase = 3
        time.sleep(0.8)
        w.stop.set()
        for t in threads:
            t.join()
        assert not w.errors
        assert len(w.updated) >= 10 and len(w.inserted) >= 30
        msgs = wait_for(lambda: (m := stream_messages(nats_server.url, schemas=True))
                        and _arrived(m, w) and m, 60, 0.5, "every written change")
        assert bridge.alive() and bridge.proc is not None and bridge.proc.pid == pid
    finally:
        w.stop.set()
        for t in threads:
            if t.is_alive():
                t.join()
        bridge.terminate()
        engine.dispose()

    schema_events = [m for m in msgs if m.subject == "cdc._schema.erp._.invoices"]
    assert [(m.body["data"]["old_version"], m.body["data"]["new_version"])
            for m in schema_events] == [(None, 1), (1, 2), (2, 3)]
    columns = {m.body["data"]["new_version"]: [c["name"] for c in
                                               m.body["data"]["entry"]["columns"]]
               for m in schema_events}
    assert columns == {1: ["id", "amount", "note", "updated_at"],
                       2: ["id", "amount", "note", "updated_at", "currency"],
                       3: ["id", "amount", "updated_at", "currency"]}
    announced = {m.body["data"]["new_version"]: m.seq for m in schema_events}
    rows = _rows(msgs)
    assert all(m.body["data"]["op"] != "t" for m in rows)
    versions = [m.body["data"]["source"]["schema_version"] for m in rows]
    assert versions == sorted(versions) and set(versions) == {1, 2, 3}
    for m in rows:
        version = m.body["data"]["source"]["schema_version"]
        assert announced[version] < m.seq
        assert m.body["dataschema"].endswith(f"/erp._.invoices.v{version}")
        assert list(m.body["data"]["after"]) == columns[version], m.body
    by_id = {m.body["data"]["key"]["id"]: m.body["data"] for m in rows}
    for i, (amount, currency) in w.inserted.items():
        after = by_id[i]["after"]
        assert after["amount"] == str(amount)
        if currency is not None:  # written under v2 or v3: read under it too
            assert by_id[i]["source"]["schema_version"] >= 2
            assert after["currency"] == currency
    assert "restarting" not in bridge.log()
