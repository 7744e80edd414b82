"""``type: sql_poll`` — change capture by polling any SQL database through SQLAlchemy Core.

SQLAlchemy supplies dialects, identifier quoting and reflection, so the same code reads
SQLite, PostgreSQL, MariaDB/MySQL and anything else with a dialect. Identifiers from the
config are only ever used through reflected ``Table``/``Column`` objects, never pasted
into SQL text.

Mode ``incrementing``: new rows are those whose ``incrementing_column`` is above the
last value seen. Each poll reads up to ``batch_size`` rows in column order; the batch's
checkpoint is the last value read, committed in the outbox transaction with the
events, so a restart continues exactly after it. Blocking database calls run in a
worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.exc import NoSuchTableError, OperationalError, SQLAlchemyError

from adapters.base import AdapterConfig, ChangeBatch, Checkpoint
from adapters.registry import AdapterContext, AdapterType
from bridge.errors import SourceSetupError, SourceUnavailable
from bridge.events import ChangeEvent
from bridge.model import Duration, StrictModel

log = logging.getLogger("cdc_bridge.adapter.sql_poll")


class PollTable(StrictModel):
    #: ``table`` or ``schema.table``.
    name: str
    mode: Literal["incrementing"] = "incrementing"
    incrementing_column: str = "id"
    batch_size: int | None = Field(default=None, ge=1, le=100_000)


class SqlPollConfig(AdapterConfig):
    type: Literal["sql_poll"]
    #: An SQLAlchemy URL, e.g. ``sqlite:///legacy.db`` or ``mysql+pymysql://u:p@h/db``.
    url: str = Field(repr=False)
    poll_interval: Duration = 5.0
    batch_size: int = Field(default=1000, ge=1, le=100_000)
    tables: list[PollTable] = Field(min_length=1)


class _TableReader:
    """Reads one configured table; everything here is blocking (run in a thread)."""

    def __init__(self, engine: sa.Engine, spec: PollTable, batch_size: int) -> None:
        schema, _, name = spec.name.rpartition(".")
        self.spec = spec
        self.schema = schema or None
        self.table_name = name
        self.batch_size = spec.batch_size or batch_size
        try:
            self.table = sa.Table(name, sa.MetaData(), schema=self.schema, autoload_with=engine)
        except NoSuchTableError as e:
            raise SourceSetupError(f"table {spec.name!r} not found in the source") from e
        if spec.incrementing_column not in self.table.c:
            raise SourceSetupError(
                f"table {spec.name!r} has no column {spec.incrementing_column!r}")
        self.cursor_col = self.table.c[spec.incrementing_column]
        pk = [c.name for c in self.table.primary_key.columns]
        self.key_cols = pk or [spec.incrementing_column]

    def read(self, conn: sa.Connection, last: Any) -> list[dict[str, Any]]:
        query = sa.select(self.table).order_by(self.cursor_col).limit(self.batch_size)
        if last is not None:
            query = query.where(self.cursor_col > last)
        return [dict(row._mapping) for row in conn.execute(query)]


class SqlPollAdapter:
    def __init__(self, config: SqlPollConfig, context: AdapterContext) -> None:
        self.name = config.name
        self.config = config
        self.context = context
        self.engine: sa.Engine | None = None
        self.readers: list[_TableReader] = []

    def _open(self) -> None:
        try:
            self.engine = sa.create_engine(self.config.url, pool_pre_ping=True)
            self.readers = [_TableReader(self.engine, t, self.config.batch_size)
                            for t in self.config.tables]
        except OperationalError as e:
            raise SourceUnavailable(f"cannot reach source database: {e.orig!r}") from None

    def _poll(self, state: dict[str, Any]) -> list[ChangeBatch]:
        assert self.engine is not None
        batches = []
        try:
            with self.engine.connect() as conn:
                for reader in self.readers:
                    rows = reader.read(conn, state.get(reader.spec.name))
                    if rows:
                        batches.append(self._batch(reader, rows, state))
        except OperationalError as e:
            raise SourceUnavailable(f"source database error: {e.orig!r}") from None
        except SQLAlchemyError as e:
            raise SourceUnavailable(f"source query failed: {type(e).__name__}") from e
        return batches

    def _batch(self, reader: _TableReader, rows: list[dict[str, Any]],
               state: dict[str, Any]) -> ChangeBatch:
        now = int(time.time() * 1000)
        col = reader.spec.incrementing_column
        events = [
            ChangeEvent(
                adapter=self.name, schema=reader.schema, table=reader.table_name, op="c",
                position=f"{reader.spec.name}:{row[col]}",
                key={k: row[k] for k in reader.key_cols}, after=row, ts_ms=now,
                source_extra={"mode": "incrementing"},
            )
            for row in rows
        ]
        state[reader.spec.name] = _jsonable(rows[-1][col])
        return ChangeBatch(events, {"tables": dict(state)})

    async def changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        state: dict[str, Any] = dict((checkpoint or {}).get("tables", {}))
        await asyncio.to_thread(self._open)
        while True:
            batches = await asyncio.to_thread(self._poll, state)
            for batch in batches:
                yield batch
            full = any(len(b.events) >= r.batch_size for b, r in zip(batches, self.readers))
            if not full:
                await asyncio.sleep(self.config.poll_interval)

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        return None

    async def close(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.dispose)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, int | str | float) else str(value)


def _factory(config: AdapterConfig, context: AdapterContext) -> SqlPollAdapter:
    assert isinstance(config, SqlPollConfig)
    return SqlPollAdapter(config, context)


ADAPTER_TYPE = AdapterType("sql_poll", SqlPollConfig, _factory)
