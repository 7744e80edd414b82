"""Row filters (docs/filters.md) on every source, against real servers, in process.

The same story on each: rows that match are captured, rows that do not are not; an
update moving a row into the filter arrives as ``c`` (no before), one moving it out as
``d`` with the before image; deletes pass for matching rows only. PostgreSQL applies
the filter in its publication (and the snapshot's WHERE), sql_poll in its queries,
files and mysql_binlog in the bridge. ``cdc-bridge validate`` rejects a bad expression
with its position.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cdc_bridge.adapters.contract import AdapterContext
from cdc_bridge.adapters.registry import REGISTRY, create
from cdc_bridge.kernel.errors import SourceSetupError
from cdc_bridge.kernel.events import ChangeEvent
from tests.harnesses import unique
from tests.harnesses.mysql_binlog import run_sql
from tests.services.mariadb import MariaDBServer
from tests.test_pg_adapter import pg_dsn, sql  # noqa: F401

OPEN = "status = 'open'"


class Run:
    """One adapter read as the daemon reads it (each batch acknowledged after it), by a
    task of its own, so waiting for "nothing more" never interrupts the adapter."""

    def __init__(self, kind: str, tmp: Path, **config: Any) -> None:
        model = REGISTRY[kind].config_model.model_validate(
            {"name": "src", "type": kind, **config})
        self.adapter = create(model, AdapterContext(state_dir=tmp))
        self.events: list[ChangeEvent] = []
        self.task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        async for batch in self.adapter.changes(None):
            self.events += batch.events
            if batch.checkpoint is not None:
                await self.adapter.acknowledge(batch.checkpoint)

    async def until(self, done: Callable[[list[ChangeEvent]], bool],
                    timeout_s: float = 30) -> list[ChangeEvent]:
        if self.task is None:
            self.task = asyncio.create_task(self._pump())
        async with asyncio.timeout(timeout_s):
            while not done(self.events):
                if self.task.done():
                    self.task.result()  # the adapter's error
                    raise AssertionError("the adapter stopped")
                await asyncio.sleep(0.02)
        return self.events

    async def settle(self, seconds: float) -> list[ChangeEvent]:
        """Everything that arrived after ``seconds`` more (for "and nothing else")."""
        await asyncio.sleep(seconds)
        return self.events

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.adapter.close()


def summary(events: list[ChangeEvent]) -> list[tuple[str, Any, Any, Any]]:
    """``(op, key id, before status, after status)`` of row events."""
    return [(e.op, (e.key or {}).get("id"), (e.before or {}).get("status"),
             (e.after or {}).get("status")) for e in events if e.op != "t"]


#: The changes every source is put through, after rows 1 (open) and 2 (closed).
CHANGES = [
    "INSERT INTO orders VALUES (3, 'open', 30)",
    "INSERT INTO orders VALUES (4, 'closed', 40)",
    "UPDATE orders SET status = 'open' WHERE id = 4",     # crosses in: c
    "UPDATE orders SET status = 'closed' WHERE id = 1",   # crosses out: d with before
    "UPDATE orders SET amount = 31 WHERE id = 3",         # stays in: u
    "UPDATE orders SET amount = 21 WHERE id = 2",         # stays out: nothing
    "DELETE FROM orders WHERE id = 3",                    # matching: d
    "DELETE FROM orders WHERE id = 2",                    # not matching: nothing
]
#: What a source with before images publishes for CHANGES.
EXPECTED = [
    ("c", 3, None, "open"),
    ("c", 4, None, "open"),
    ("d", 1, "open", None),
    ("u", 3, "open", "open"),
    ("d", 3, "open", None),
]
SEED = ["CREATE TABLE orders (id int PRIMARY KEY, status varchar(10), amount int)",
        "INSERT INTO orders VALUES (1, 'open', 10), (2, 'closed', 20)"]


async def test_postgres_publication_row_filter(pg_dsn: str, tmp_path: Path) -> None:  # noqa: F811
    sql(pg_dsn, *SEED)
    cfg = {"dsn": pg_dsn, "tables": [{"name": "public.orders", "filter": OPEN}],
           "heartbeat_interval": 0}
    # status is outside the replica identity (the key): refused, with the fix
    refused = Run("postgres", tmp_path, **cfg)
    with pytest.raises(SourceSetupError, match=r"REPLICA IDENTITY FULL"):
        await refused.until(lambda ev: False)
    await refused.close()
    sql(pg_dsn, "ALTER TABLE orders REPLICA IDENTITY FULL")
    bad = Run("postgres", tmp_path, **{**cfg, "slot": "other", "publication": "other",
                                      "tables": [{"name": "orders", "filter": "colour = 1"}]})
    with pytest.raises(SourceSetupError, match=r"reads 'colour', which the table does not"):
        await bad.until(lambda ev: False)
    await bad.close()
    run = Run("postgres", tmp_path, **cfg)
    try:
        snap = await run.until(lambda ev: len(ev) >= 1)
        assert summary(snap) == [("r", 1, None, "open")]
        (filt,) = sql(pg_dsn, "SELECT rowfilter FROM pg_publication_tables "
                      "WHERE pubname = 'cdc_bridge_src'")[0]
        assert "open" in filt
        sql(pg_dsn, *CHANGES)
        got = await run.until(lambda ev: len(ev) >= 1 + len(EXPECTED))
        assert summary(got[1:]) == EXPECTED
        assert got[3].before == {"id": 1, "status": "open", "amount": 10}
    finally:
        await run.close()


async def test_mysql_binlog_filter_in_the_bridge(mariadb_binlog_server: MariaDBServer,
                                                 tmp_path: Path) -> None:
    server = mariadb_binlog_server
    db = unique("flt")
    run_sql(server, f"CREATE DATABASE {db}")
    run_sql(server, *SEED, database=db)
    cfg = {"dsn": f"mysql://root@127.0.0.1:{server.port}", "heartbeat_interval": "1s",
           "server_id": 9100 + server.port % 1000, "connect_timeout": "5s"}
    bad = Run("mysql_binlog", tmp_path,
              **{**cfg, "tables": [{"name": f"{db}.orders", "filter": "colour = 1"}]})
    with pytest.raises(SourceSetupError, match=r"reads 'colour', which the table does not"):
        await bad.until(lambda ev: False)
    await bad.close()
    run = Run("mysql_binlog", tmp_path,
              **{**cfg, "tables": [{"name": f"{db}.orders", "filter": OPEN}]})
    try:
        snap = await run.until(lambda ev: len(ev) >= 1)
        assert summary(snap) == [("r", 1, None, "open")]
        await asyncio.to_thread(run_sql, server, *CHANGES, database=db)
        got = await run.until(lambda ev: len(ev) >= 1 + len(EXPECTED))
        assert summary(got[1:]) == EXPECTED
        assert got[3].before == {"id": 1, "status": "open", "amount": 10}
    finally:
        await run.close()


async def test_sql_poll_where_pushdown(tmp_path: Path) -> None:
    db = tmp_path / "legacy.db"
    conn = sqlite3.connect(db)
    conn.executescript(";".join(SEED) + ";CREATE TABLE log (id integer PRIMARY KEY, "
                       "status text, amount int);INSERT INTO log VALUES (1, 'open', 1), "
                       "(2, 'closed', 2)")
    conn.commit()
    run = Run("sql_poll", tmp_path, url=f"sqlite:///{db}", poll_interval="100ms", tables=[
        {"name": "orders", "mode": "diff", "filter": OPEN},
        {"name": "log", "mode": "incrementing", "filter": "status = 'open' and op != 'd'"}])
    try:
        snap = await run.until(lambda ev: len(ev) >= 2)
        assert sorted((e.table, *summary([e])[0]) for e in snap) == [
            ("log", "r", 1, None, "open"), ("orders", "r", 1, None, "open")]
        conn.executescript(";".join(CHANGES) + ";INSERT INTO log VALUES (3, 'open', 3), "
                           "(4, 'closed', 4)")
        conn.commit()
        await run.until(lambda ev: len(ev) >= 5)
        got = await run.settle(0.6)
        # one diff pass sees the net result: 3 was inserted and deleted between passes,
        # 4 appears open (c), 1 left the filter (d, with the before image the diff kept)
        assert sorted(summary([e for e in got[2:] if e.table == "orders"])) == [
            ("c", 4, None, "open"), ("d", 1, "open", None)]
        assert summary([e for e in got[2:] if e.table == "log"]) == [("c", 3, None, "open")]
        # crossing back in: a c again
        conn.execute("UPDATE orders SET status = 'open' WHERE id = 1")
        conn.commit()
        got = await run.until(lambda ev: len(ev) >= 6)
        assert summary(got[5:]) == [("c", 1, None, "open")]
    finally:
        await run.close()
        conn.close()


async def test_files_drop_and_snapshot_modes(tmp_path: Path) -> None:
    drop, snap = tmp_path / "drop", tmp_path / "snap"
    drop.mkdir()
    snap.mkdir()
    (drop / "a.csv").write_text("id,status,amount\n1,open,10\n2,closed,20\n3,open,5\n")
    common = {"poll_interval": "100ms", "stable_for": "0s", "key": ["id"],
              "types": {"id": "int", "amount": "int"}}
    run = Run("files", tmp_path / "d", path=str(drop), pattern="*.csv", mode="drop",
              filter="status = 'open' and amount >= 10", **common)
    try:
        got = await run.until(lambda ev: len(ev) >= 1)
        assert summary(await run.settle(0.5)) == [("c", 1, None, "open")]
    finally:
        await run.close()
    (snap / "1.csv").write_text("id,status,amount\n1,open,10\n2,closed,20\n3,open,30\n")
    run = Run("files", tmp_path / "s", path=str(snap), pattern="*.csv", mode="snapshot",
              filter=OPEN, **common)
    try:
        got = await run.until(lambda ev: len(ev) >= 2)
        assert sorted(summary(got)) == [("r", 1, None, "open"), ("r", 3, None, "open")]
        # the next extract: 1 closed (out), 2 opened (in), 3 changed, 4 new closed
        (snap / "2.csv").write_text("id,status,amount\n1,closed,10\n2,open,20\n"
                                    "3,open,31\n4,closed,40\n")
        got = await run.until(lambda ev: len(ev) >= 5)
        assert sorted(summary(got[2:])) == [
            ("c", 2, None, "open"), ("d", 1, "open", None), ("u", 3, "open", "open")]
        assert summary(await run.settle(0.5))[5:] == []
    finally:
        await run.close()


def test_validate_rejects_a_bad_filter_with_its_position(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("adapters:\n  - {name: a, type: sql_poll, url: 'sqlite:///x.db',\n"
                   "     tables: [{name: t, filter: \"amount > 5 and status = \"}]}\n")
    proc = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "validate", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout
    assert "adapters[0].tables[0].filter: the filter ends too early" in proc.stderr
    assert "at column 24\n    amount > 5 and status = \n" in proc.stderr
