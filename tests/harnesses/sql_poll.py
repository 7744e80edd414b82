"""Conformance harness of ``type: sql_poll``: a MariaDB table polled in ``incrementing`` mode.

A database of its own on the session MariaDB; ``write(n)`` inserts n rows with growing
ids in one transaction. Rows present on the first start arrive as ``op: r``
(``snapshot: initial``), later ones as ``op: c``. ``batch_size: 3`` reads most writes in
several pages, each its own batch and checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pymysql
import pytest

from cdc_bridge.adapters.sql_poll import SqlPollConfig
from cdc_bridge.kernel.events import ChangeEvent
from tests.conformance import Denied, Item, NotApplicable
from tests.harnesses import closed_port, unique
from tests.services.mariadb import MariaDBServer

SOURCE_TYPE = "sql_poll"


class SqlPollHarness:
    source_type = SOURCE_TYPE

    def __init__(self, server: MariaDBServer, database: str) -> None:
        self.server = server
        self.database = database
        self.users: list[str] = []
        self.next_id = 1

    def run(self, *statements: str, args: Any = None, database: str | None = None) -> None:
        conn = pymysql.connect(host="127.0.0.1", port=self.server.port, user="root",
                               database=database, autocommit=False)
        try:
            with conn.cursor() as cur:
                for st in statements:
                    cur.execute(st, args)
            conn.commit()
        finally:
            conn.close()

    def url(self, user: str = "root", port: int | None = None) -> str:
        return f"mysql+pymysql://{user}@127.0.0.1:{port or self.server.port}/{self.database}"

    def _config(self, name: str, url: str) -> SqlPollConfig:
        return SqlPollConfig.model_validate({
            "name": name, "type": "sql_poll", "url": url, "poll_interval": "100ms",
            "batch_size": 3, "tables": [{"name": "items", "mode": "incrementing",
                                         "incrementing_column": "id",
                                         "snapshot": "initial"}]})

    def config(self, name: str) -> SqlPollConfig:
        return self._config(name, self.url())

    async def write(self, n: int) -> list[str]:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        values = ", ".join(f"({i}, 'row {i}')" for i in ids)
        await asyncio.to_thread(self.run, f"INSERT INTO items (id, v) VALUES {values}",
                                database=self.database)
        return [str(i) for i in ids]

    def key(self, item: Item) -> str:
        assert isinstance(item, ChangeEvent), f"not a row change: {item!r}"
        assert item.after is not None, f"no row in {item!r}"
        return str(item.after["id"])

    def unreachable(self, name: str) -> SqlPollConfig:
        return self._config(name, self.url(port=closed_port()))

    async def released(self) -> None:
        return None

    async def no_privilege(self, name: str) -> Sequence[Denied] | NotApplicable:
        user = unique("conf_nosel")
        other = unique("conf_other")
        self.users.append(user)
        # may log in and use another table of the database, but not read ``items``
        await asyncio.to_thread(
            self.run, f"CREATE TABLE {other} (id int PRIMARY KEY)",
            f"CREATE USER '{user}'@'%'",
            f"GRANT SELECT ON {self.database}.{other} TO '{user}'@'%'",
            database=self.database)
        return [Denied("user without SELECT on the table",
                       self._config(name, self.url(user)),
                       r"(?i)denied|privilege")]

    def drop(self) -> None:
        statements = [f"DROP DATABASE IF EXISTS {self.database}"]
        statements += [f"DROP USER IF EXISTS '{u}'@'%'" for u in self.users]
        self.run(*statements)


@contextlib.asynccontextmanager
async def open_harness(request: pytest.FixtureRequest, workdir: Path
                       ) -> AsyncIterator[SqlPollHarness]:
    server: MariaDBServer = request.getfixturevalue("mariadb_server")
    harness = SqlPollHarness(server, unique("conf"))
    harness.run(f"CREATE DATABASE {harness.database}")
    try:
        harness.run("CREATE TABLE items (id int PRIMARY KEY, v varchar(40))",
                    database=harness.database)
        yield harness
    finally:
        harness.drop()
