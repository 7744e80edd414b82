"""Conformance harness of ``type: mysql_binlog``: a database of its own on the session
MariaDB with a row binary log.

``write(n)`` inserts n rows in one transaction, so with ``batch_size: 3`` most writes are
cut into several batches inside one transaction. The first start takes the initial
snapshot (rows written before it arrive as ``op: r``). Each harness registers with a
``server_id`` of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pymysql
import pytest

from cdc_bridge.adapters.mysql_binlog.config import MysqlBinlogConfig
from cdc_bridge.kernel.events import ChangeEvent
from tests.conformance import Denied, Item, NotApplicable
from tests.harnesses import closed_port, unique
from tests.services.mariadb import MariaDBServer

SOURCE_TYPE = "mysql_binlog"
_IDS = itertools.count(7000)


def run_sql(server: MariaDBServer, *statements: str, args: Any = None,
            database: str | None = None) -> list[tuple[Any, ...]]:
    """Statements as root in one transaction; rows of the last one."""
    conn = pymysql.connect(host="127.0.0.1", port=server.port, user="root",
                           database=database, autocommit=False)
    rows: list[tuple[Any, ...]] = []
    try:
        with conn.cursor() as cur:
            for st in statements:
                cur.execute(st, args)
                rows = list(cur.fetchall())
        conn.commit()
    finally:
        conn.close()
    return rows


class MysqlBinlogHarness:
    source_type = SOURCE_TYPE

    def __init__(self, server: MariaDBServer, database: str) -> None:
        self.server = server
        self.database = database
        self.users: list[str] = []
        self.next_id = 1
        self.server_id = next(_IDS)

    def dsn(self, user: str = "root", port: int | None = None) -> str:
        return f"mysql://{user}@127.0.0.1:{port or self.server.port}"

    def _config(self, name: str, dsn: str) -> MysqlBinlogConfig:
        return MysqlBinlogConfig.model_validate({
            "name": name, "type": "mysql_binlog", "dsn": dsn,
            "tables": [f"{self.database}.items"], "snapshot": "initial", "batch_size": 3,
            "snapshot_chunk_size": 3, "heartbeat_interval": "1s", "connect_timeout": "5s",
            "server_id": self.server_id})

    def config(self, name: str) -> MysqlBinlogConfig:
        return self._config(name, self.dsn())

    async def write(self, n: int) -> list[str]:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        values = ", ".join(f"({i}, 'row {i}')" for i in ids)
        await asyncio.to_thread(run_sql, self.server,
                                f"INSERT INTO items (id, v) VALUES {values}",
                                database=self.database)
        return [str(i) for i in ids]

    def key(self, item: Item) -> str:
        assert isinstance(item, ChangeEvent), f"not a row change: {item!r}"
        row = item.after or item.before
        assert row is not None, f"no row in {item!r}"
        return str(row["id"])

    def unreachable(self, name: str) -> MysqlBinlogConfig:
        return self._config(name, self.dsn(port=closed_port()))

    async def released(self) -> None:
        return None  # a new dump with the same server_id replaces the old one

    async def no_privilege(self, name: str) -> Sequence[Denied] | NotApplicable:
        no_repl = unique("conf_norepl")
        no_select = unique("conf_nosel")
        self.users += [no_repl, no_select]
        await asyncio.to_thread(
            run_sql, self.server,
            f"CREATE USER '{no_repl}'@'%'",
            f"GRANT SELECT ON {self.database}.* TO '{no_repl}'@'%'",
            f"GRANT REPLICATION CLIENT ON *.* TO '{no_repl}'@'%'",
            f"CREATE USER '{no_select}'@'%'",
            f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{no_select}'@'%'")
        return [
            Denied("user without REPLICATION SLAVE",
                   self._config(f"{name}-repl", self.dsn(no_repl)),
                   r"lacks REPLICATION SLAVE: GRANT REPLICATION SLAVE ON \*\.\*"),
            Denied("user with replication but without SELECT on the table",
                   self._config(f"{name}-select", self.dsn(no_select)),
                   r"no SELECT privilege on \w+\.items"),
        ]

    def drop(self) -> None:
        statements = [f"DROP DATABASE IF EXISTS {self.database}"]
        statements += [f"DROP USER IF EXISTS '{u}'@'%'" for u in self.users]
        run_sql(self.server, *statements)


@contextlib.asynccontextmanager
async def open_harness(request: pytest.FixtureRequest, workdir: Path
                       ) -> AsyncIterator[MysqlBinlogHarness]:
    server: MariaDBServer = request.getfixturevalue("mariadb_binlog_server")
    harness = MysqlBinlogHarness(server, unique("conf"))
    run_sql(server, f"CREATE DATABASE {harness.database}")
    try:
        run_sql(server, "CREATE TABLE items (id int PRIMARY KEY, v varchar(40))",
                database=harness.database)
        yield harness
    finally:
        harness.drop()
