"""Conformance harness of ``type: outbox_table``: an application outbox in its own database.

``write(n)`` writes n events with :func:`cdc_bridge.client.outbox.write_event` in one
application transaction; the source key is the ``k`` of each event's payload (the message
id is the row's id). ``batch_size: 3`` cuts most writes into several batches; relayed
rows are deleted (``on_publish: delete``) once acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import orjson
import psycopg
import pytest

from cdc_bridge.adapters.outbox_table import OutboxTableConfig
from cdc_bridge.client.outbox import create_outbox_table, write_event
from cdc_bridge.kernel.events import RoutedMessage
from tests.conformance import Denied, Item, NotApplicable
from tests.harnesses import PgDatabase, closed_port
from tests.services.postgres import PostgresServer

SOURCE_TYPE = "outbox_table"


class OutboxTableHarness:
    source_type = SOURCE_TYPE

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        self.next_key = 1

    def _config(self, name: str, dsn: str) -> OutboxTableConfig:
        return OutboxTableConfig.model_validate({
            "name": name, "type": "outbox_table", "dsn": dsn, "poll_interval": "100ms",
            "batch_size": 3, "on_publish": "delete"})

    def config(self, name: str) -> OutboxTableConfig:
        return self._config(name, self.db.dsn())

    def _write(self, keys: list[str]) -> None:
        with psycopg.connect(self.db.dsn()) as conn, conn.transaction():
            for k in keys:
                write_event(conn, "order", k, "created", {"k": k})

    async def write(self, n: int) -> list[str]:
        keys = [f"e{i}" for i in range(self.next_key, self.next_key + n)]
        self.next_key += n
        await asyncio.to_thread(self._write, keys)
        return keys

    def key(self, item: Item) -> str:
        assert isinstance(item, RoutedMessage), f"not an outbox message: {item!r}"
        return str(orjson.loads(item.body)["data"]["k"])

    def unreachable(self, name: str) -> OutboxTableConfig:
        return self._config(name, f"postgresql://postgres@127.0.0.1:{closed_port()}/"
                                  f"{self.db.name}")

    async def released(self) -> None:
        return None

    async def no_privilege(self, name: str) -> Sequence[Denied] | NotApplicable:
        no_select = self.db.role("conf_nosel")
        no_delete = self.db.role("conf_nodel")
        await self.db.arun(f"GRANT SELECT ON cdc_outbox TO {no_delete}")
        return [
            Denied("role without SELECT on the outbox table",
                   self._config(f"{name}-select", self.db.dsn(no_select)),
                   r"(?i)permission denied|privilege"),
            Denied("role with SELECT but without DELETE on the outbox table",
                   self._config(f"{name}-delete", self.db.dsn(no_delete)),
                   r"(?i)permission denied|privilege"),
        ]


@contextlib.asynccontextmanager
async def open_harness(request: pytest.FixtureRequest, workdir: Path
                       ) -> AsyncIterator[OutboxTableHarness]:
    server: PostgresServer = request.getfixturevalue("postgres_server")
    db = PgDatabase(server)
    try:
        with psycopg.connect(db.dsn()) as conn, conn.transaction():
            create_outbox_table(conn)
        yield OutboxTableHarness(db)
    finally:
        db.drop()
