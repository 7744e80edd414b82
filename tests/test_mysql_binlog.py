"""``type: mysql_binlog`` against a real MariaDB with a row binlog, in process: every type,
updates and deletes, DDL mid-stream, truncate, a large transaction in bounded memory,
a server restart, a purged binlog."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc_bridge.adapters.contract import AdapterContext, ChangeBatch, Checkpoint
from cdc_bridge.adapters.mysql_binlog.adapter import MysqlBinlogAdapter
from cdc_bridge.adapters.mysql_binlog.config import MysqlBinlogConfig
from cdc_bridge.kernel.errors import SourceSetupError, SourceUnavailable
from cdc_bridge.kernel.events import ChangeEvent, dumps
from tests.harnesses import unique
from tests.harnesses.mysql_binlog import run_sql
from tests.services.mariadb import MariaDBServer

TYPES_DDL = """CREATE TABLE t (id bigint unsigned PRIMARY KEY, d decimal(30,10),
 dt datetime(6), ts timestamp(6) NULL, j json, e enum('a','b'), s set('x','y','z'),
 b bit(10), bl blob, f float, db double, tm time(3), dd date, y year, txt text)"""
TYPES_ROW = ("INSERT INTO t VALUES (18446744073709551615, 12345678901234567890.0123456789, "
             "'2024-05-01 10:00:00.123456', '2024-05-01 10:00:00.654321', "
             "'{\"a\": [1, 2.5, \"x\"]}', 'b', 'x,z', b'1010101010', x'00ff10', 0.1, 0.1, "
             "'12:34:56.789', '2024-02-29', 2024, 'héllo')")
EXPECTED = {"id": 18446744073709551615, "d": "12345678901234567890.0123456789",
            "dt": "2024-05-01T10:00:00.123456", "ts": "2024-05-01T10:00:00.654321Z",
            "j": {"a": [1, 2.5, "x"]}, "e": "b", "s": ["x", "z"], "b": "1010101010",
            "bl": "AP8Q", "f": 0.1, "db": 0.1, "tm": 45296.789, "dd": "2024-02-29",
            "y": 2024, "txt": "héllo"}


def config(server: MariaDBServer, db: str, **extra: Any) -> MysqlBinlogConfig:
    return MysqlBinlogConfig.model_validate({
        "name": "erp", "type": "mysql_binlog", "dsn": f"mysql://root@127.0.0.1:{server.port}",
        "tables": [f"{db}.*"], "heartbeat_interval": "1s", "connect_timeout": "5s",
        "server_id": 9000 + server.port % 1000, **extra})


class Run:
    """An adapter read like the daemon reads it (each batch's checkpoint kept)."""

    def __init__(self, cfg: MysqlBinlogConfig, tmp: Path, checkpoint: Checkpoint | None = None):
        self.adapter = MysqlBinlogAdapter(cfg, AdapterContext(state_dir=tmp))
        self.gen: AsyncIterator[ChangeBatch] = aiter(self.adapter.changes(checkpoint))
        self.events: list[ChangeEvent] = []
        self.checkpoint = checkpoint

    async def until(self, done: Callable[[list[ChangeEvent]], bool],
                    timeout_s: float = 60) -> list[ChangeEvent]:
        async with asyncio.timeout(timeout_s):
            while not done(self.events):
                batch = await anext(self.gen)
                self.events += batch.events
                if batch.checkpoint is not None:
                    self.checkpoint = batch.checkpoint
        return self.events

    async def streaming(self) -> list[ChangeEvent]:
        """Until the snapshot is committed (its transaction, and its table locks, ended)."""
        return await self.until(lambda ev: bool(self.checkpoint)
                                and self.checkpoint.get("snapshot") is None)  # type: ignore[union-attr]

    async def close(self) -> None:
        await self.gen.aclose()  # type: ignore[attr-defined]
        await self.adapter.close()


def wire(e: ChangeEvent) -> dict[str, Any]:
    return dict(orjson.loads(dumps(e.data())))


@pytest.fixture
def db(mariadb_binlog_server: MariaDBServer) -> str:
    name = unique("bl")
    run_sql(mariadb_binlog_server, f"CREATE DATABASE {name}")
    return name


async def test_types_changes_ddl_truncate(mariadb_binlog_server: MariaDBServer, db: str,
                                          tmp_path: Path) -> None:
    server = mariadb_binlog_server
    run_sql(server, "SET time_zone = '+00:00'", TYPES_DDL, TYPES_ROW, database=db)
    run = Run(config(server, db), tmp_path)
    try:
        snap = await run.streaming()
        assert snap[0].op == "r" and wire(snap[0])["after"] == EXPECTED
        await asyncio.to_thread(
            run_sql, server, "SET time_zone = '+00:00'", "DELETE FROM t", TYPES_ROW,
            "UPDATE t SET e = 'a', s = '' WHERE id = 18446744073709551615",
            "ALTER TABLE t ADD COLUMN extra int DEFAULT 7",
            "INSERT INTO t (id) VALUES (2)", "TRUNCATE t", database=db)
        ev = await run.until(lambda ev: any(e.op == "t" for e in ev))
        ops = [e.op for e in ev[1:]]
        assert ops == ["d", "c", "u", "c", "t"], ops
        d, c, u, c2, t = (wire(e) for e in ev[1:])
        assert d["before"] == EXPECTED and d["after"] is None
        assert c["after"] == EXPECTED, "a streamed row differs from its snapshot copy"
        assert u["before"] == EXPECTED and u["after"]["e"] == "a" and u["after"]["s"] == []
        assert "extra" not in u["after"] and c2["after"]["extra"] == 7
        assert c2["key"] == {"id": 2} and t["key"] is None
        assert ev[1].subject("cdc") == f"cdc.erp.{db}.t.d"
        assert c["source"]["gtid"] and c["source"]["ts_ms"]
        assert run.adapter.connected and set(run.adapter.lag()) <= {"bytes", "seconds"}
    finally:
        await run.close()


async def test_large_transaction_in_bounded_memory(mariadb_binlog_server: MariaDBServer,
                                                   db: str, tmp_path: Path) -> None:
    server = mariadb_binlog_server
    run_sql(server, "CREATE TABLE big (id int PRIMARY KEY, v varchar(60))", database=db)
    run = Run(config(server, db, batch_size=2000), tmp_path)
    n = 200_000
    seen = 0
    try:
        await run.streaming()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        await asyncio.to_thread(
            run_sql, server, f"INSERT INTO big SELECT seq, repeat('x', 50) FROM seq_1_to_{n}",
            database=db)
        cuts = 0
        async with asyncio.timeout(180):
            while seen < n:
                batch = await anext(run.gen)
                seen += len(batch.events)  # not kept: a daemon commits and forgets them
                assert batch.checkpoint is not None
                cuts += batch.checkpoint["tx"] is not None
        growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        assert seen == n and cuts > 10
        assert growth_mb < 150, f"peak RSS grew {growth_mb:.0f} MB reading {n} rows"
    finally:
        await run.close()


async def test_restart_purge_and_resume(fresh_mariadb_binlog: MariaDBServer,
                                        tmp_path: Path) -> None:
    server = fresh_mariadb_binlog
    db = unique("bl")
    run_sql(server, f"CREATE DATABASE {db}")
    run_sql(server, "CREATE TABLE t (id int PRIMARY KEY)", "INSERT INTO t VALUES (1)",
            database=db)
    cfg = config(server, db)
    run = Run(cfg, tmp_path)
    await run.streaming()
    await asyncio.to_thread(run_sql, server, "INSERT INTO t VALUES (2)", database=db)
    await run.until(lambda ev: len(ev) == 2)  # the binlog connection is up
    # MariaDB restarted mid-stream: the reader fails retryably
    await asyncio.to_thread(server.restart)
    with pytest.raises(SourceUnavailable):
        await run.until(lambda ev: False, timeout_s=60)
    await run.adapter.close()
    # a new instance resumes exactly from the checkpoint, across the rotation
    run_sql(server, "INSERT INTO t VALUES (3)", "FLUSH BINARY LOGS",
            "INSERT INTO t VALUES (4)", database=db)
    again = Run(cfg, tmp_path, run.checkpoint)
    got = await again.until(lambda ev: len(ev) >= 2)
    assert [(e.op, e.after["id"]) for e in got if e.after] == [("c", 3), ("c", 4)]
    stale = again.checkpoint
    await again.close()
    # the checkpoint's binlog purged: fatal, with the way out
    run_sql(server, "FLUSH BINARY LOGS", "INSERT INTO t VALUES (5)", "FLUSH BINARY LOGS",
            database=db)
    last = run_sql(server, "SHOW MASTER STATUS")[0][0]
    run_sql(server, f"PURGE BINARY LOGS TO '{last}'")
    dead = Run(cfg, tmp_path, {**(stale or {}), "file": "binlog.000001", "pos": 4, "tx": None})
    with pytest.raises(SourceSetupError, match=r"purged.*snapshot: when_needed"):
        await dead.until(lambda ev: False, timeout_s=30)
    await dead.adapter.close()
    healed = Run(config(server, db, snapshot="when_needed"), tmp_path,
                 {**(stale or {}), "file": "binlog.000001", "pos": 4, "tx": None})
    rows = await healed.until(lambda ev: len(ev) >= 5)
    assert sorted(e.after["id"] for e in rows if e.after) == [1, 2, 3, 4, 5]
    assert {e.op for e in rows} == {"r"}
    await healed.close()


async def test_setup_errors_name_the_fix(mariadb_binlog_server: MariaDBServer, db: str,
                                         tmp_path: Path) -> None:
    server = mariadb_binlog_server
    run_sql(server, "CREATE TABLE t (id int PRIMARY KEY)", database=db)
    clash = config(server, db, server_id=server.server_id)
    with pytest.raises(SourceSetupError, match=r"server_id 1 .* server's own"):
        await Run(clash, tmp_path).until(lambda ev: False, 30)
    lines = await MysqlBinlogAdapter(config(server, db), AdapterContext(tmp_path)).init()
    assert any(f"{db}.t" in line for line in lines)


async def test_a_new_snapshot_never_repeats_earlier_ids(mariadb_binlog_server: MariaDBServer,
                                                        db: str, tmp_path: Path) -> None:
    """Two snapshots from no checkpoint (both gen 1), e.g. after the checkpoint was
    re-created: the second one's ids differ (its binlog origin), so JetStream's duplicate
    window cannot drop its rows; a resume keeps the origin."""
    server = mariadb_binlog_server
    run_sql(server, "CREATE TABLE t (id int PRIMARY KEY, v int)",
            "INSERT INTO t VALUES (1, 1), (2, 1)", database=db)
    ids = []
    for _ in range(2):
        run = Run(config(server, db, snapshot_chunk_size=1), tmp_path)
        try:
            snap = await run.until(lambda ev: len(ev) >= 1)
            assert run.checkpoint and run.checkpoint["snapshot"]["origin"]
            ids.append({e.id for e in snap})
            resumed = Run(config(server, db), tmp_path, run.checkpoint)
            rest = await resumed.until(lambda ev: len(ev) >= 1)
            prefix = snap[0].position.rsplit(":", 2)[0]  # snap:1.0@<file>:<pos>
            assert prefix.startswith("snap:1.0@binlog.")
            # a resume keeps the origin (next attempt: rows read under a new snapshot)
            assert rest[0].position.rsplit(":", 2)[0] == prefix.replace("1.0@", "1.1@")
            await resumed.close()
        finally:
            await run.close()
        await asyncio.to_thread(run_sql, server, "UPDATE t SET v = v + 1", database=db)
    assert not ids[0] & ids[1]
