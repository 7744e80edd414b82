"""Conformance harness of ``type: postgres``: a database of its own on the session server.

One table ``public.items`` captured through a slot and publication named for this
harness (slots are server-wide). ``write(n)`` inserts n rows in one transaction, so with
``batch_size: 3`` most writes are cut into several batches inside one transaction. The
first start takes the initial snapshot (rows written before it arrive as ``op: r``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from cdc_bridge.adapters.postgres.config import PostgresConfig
from cdc_bridge.kernel.events import ChangeEvent
from tests.conformance import Denied, Item, NotApplicable
from tests.harnesses import PgDatabase, closed_port, unique
from tests.services.postgres import PostgresServer

SOURCE_TYPE = "postgres"
RELEASE_TIMEOUT_S = 30.0


class PostgresHarness:
    source_type = SOURCE_TYPE

    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        self.slot = unique("conf_slot")
        self.next_id = 1

    def _config(self, name: str, dsn: str, slot: str) -> PostgresConfig:
        return PostgresConfig.model_validate({
            "name": name, "type": "postgres", "dsn": dsn, "tables": ["public.items"],
            "slot": slot, "publication": slot, "snapshot": "initial", "batch_size": 3,
            "snapshot_chunk_size": 3, "heartbeat_interval": "1s", "status_interval": "1s",
            "connect_timeout": "5s"})

    def config(self, name: str) -> PostgresConfig:
        return self._config(name, self.db.dsn(), self.slot)

    async def write(self, n: int) -> list[str]:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        await self.db.arun("INSERT INTO items (id, v) SELECT g, 'row ' || g "
                           "FROM generate_series(%s::bigint, %s::bigint) g",
                           params=(ids[0], ids[-1]))
        return [str(i) for i in ids]

    def key(self, item: Item) -> str:
        assert isinstance(item, ChangeEvent), f"not a row change: {item!r}"
        row = item.after or item.before
        assert row is not None, f"no row in {item!r}"
        return str(row["id"])

    def unreachable(self, name: str) -> PostgresConfig:
        dsn = f"postgresql://postgres@127.0.0.1:{closed_port()}/{self.db.name}"
        return self._config(name, dsn, unique("conf_slot"))

    async def released(self) -> None:
        """The server ends a walsender after its client left, not at once: wait until
        the slot is free (a slot still held long after close() is a leaked connection)."""
        deadline = time.monotonic() + RELEASE_TIMEOUT_S
        while await self.db.arun("SELECT 1 FROM pg_replication_slots "
                                 "WHERE slot_name = %s AND active", params=(self.slot,)):
            assert time.monotonic() < deadline, (
                f"replication slot {self.slot} still in use {RELEASE_TIMEOUT_S:.0f}s after "
                "close(): the adapter did not release its replication connection")
            await asyncio.sleep(0.05)

    async def no_privilege(self, name: str) -> Sequence[Denied] | NotApplicable:
        no_repl = self.db.role("conf_norepl")
        await self.db.arun(f"GRANT SELECT ON public.items TO {no_repl}")
        no_select = self.db.role("conf_nosel", "LOGIN REPLICATION")
        return [
            Denied("role without the REPLICATION attribute",
                   self._config(f"{name}-repl", self.db.dsn(no_repl), unique("conf_slot")),
                   r"lacks the REPLICATION attribute"),
            Denied("role with REPLICATION but without SELECT on the table",
                   self._config(f"{name}-select", self.db.dsn(no_select), unique("conf_slot")),
                   r"no SELECT privilege on public\.items"),
        ]


@contextlib.asynccontextmanager
async def open_harness(request: pytest.FixtureRequest, workdir: Path
                       ) -> AsyncIterator[PostgresHarness]:
    server: PostgresServer = request.getfixturevalue("postgres_server")
    db = PgDatabase(server)
    try:
        db.run("CREATE TABLE items (id bigint PRIMARY KEY, v text)")
        yield PostgresHarness(db)
    finally:
        db.drop()
