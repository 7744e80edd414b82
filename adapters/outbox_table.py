"""``type: outbox_table``: relay an application's outbox table.

The table and ``write_event`` are in :mod:`cdc_bridge.client.outbox`.

Polls the table for rows not yet relayed, oldest ``seq`` first, and turns each into a
CloudEvents message routed to ``<prefix>.outbox.<aggregate_type>.<event_type>`` (tokens
sanitised), like Debezium's outbox event router: ``id`` is the row's id (also the
``Nats-Msg-Id``), ``type`` the event type, ``subject`` the aggregate id, ``data`` the
payload exactly as stored, extensions ``aggregatetype``/``aggregateid``; the row's
headers become NATS headers. A schema the application declared (``write_event(...,
schema_version=3, dataschema="https://...")``, kept in the row's headers as
``Cdc-Schema-Version`` and ``Cdc-Dataschema``) becomes the ``schemaversion`` extension
(an integer) and the ``dataschema`` attribute instead of NATS headers; a value that is
not a positive integer or an absolute URI is left as an ordinary header. Rows without
them give the same bytes as before.

After the daemon has committed a batch to the bridge's outbox it calls
:meth:`OutboxTableAdapter.acknowledge`, which deletes those rows (``on_publish:
delete``, the default) or sets their ``published_at`` (``mark``: rows are kept for the
application's own retention). The next poll starts only after that, so rows are read
once; a crash between the commit and the delete re-reads them with the same ids, which
the relay's deduplication drops.

No cursor is kept: a poll reads whatever unrelayed rows are visible, so a transaction
that commits late with a lower ``seq`` is picked up by the next poll instead of being
skipped forever (the pitfall of cursor-based pollers). Order per aggregate is the
order in which the application wrote them, given that it serialises writes per
aggregate, as aggregates do.

The postgres adapter relays the same table by logical replication instead
(``outbox_tables``); both build their messages with :func:`outbox_message`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

import orjson
import psycopg
from psycopg import sql
from pydantic import Field

from cdc_bridge.adapters.contract import (
    AdapterConfig,
    AdapterContext,
    AdapterType,
    ChangeBatch,
    Checkpoint,
)
from cdc_bridge.kernel.errors import SourceSetupError, SourceUnavailable
from cdc_bridge.kernel.events import RoutedMessage, subject_token
from cdc_bridge.kernel.model import PollInterval
from cdc_bridge.kernel.outbox_table import DEFAULT_TABLE, ddl, table_identifier

log = logging.getLogger("cdc_bridge.adapter.outbox_table")

#: The subject token after the prefix; ``outbox`` is reserved as an adapter name for it.
OUTBOX_TOKEN = "outbox"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: Row header keys of a declared schema (as ``cdc_bridge.client.outbox`` writes them;
#: adapters may not import the client, so the names are repeated, and a test compares).
SCHEMA_VERSION_HEADER = "Cdc-Schema-Version"
DATASCHEMA_HEADER = "Cdc-Dataschema"
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00-\x1f\x7f]+$")
_VERSION = re.compile(r"^[1-9][0-9]{0,17}$")


def declared_schema(headers: Mapping[str, Any] | None
                    ) -> tuple[int | None, str | None, dict[str, Any]]:
    """``(schema version, dataschema, the other headers)`` of a row's headers (pure)."""
    if not headers:
        return None, None, {}
    version: int | None = None
    uri: str | None = None
    rest: dict[str, Any] = {}
    for k, v in headers.items():
        low = str(k).lower()
        text = str(v).strip()
        if low == SCHEMA_VERSION_HEADER.lower() and _VERSION.match(text):
            version = int(text)
        elif low == DATASCHEMA_HEADER.lower() and len(text) <= 2048 and _URI.match(text):
            uri = text
        else:
            rest[str(k)] = v
    return version, uri, rest


class OutboxTableConfig(AdapterConfig):
    type: Literal["outbox_table"]
    #: The application's PostgreSQL database.
    dsn: str = Field(repr=False)
    #: ``name`` or ``schema.name`` of the outbox table.
    table: str = DEFAULT_TABLE
    poll_interval: PollInterval = 1.0
    batch_size: int = Field(default=1000, ge=1, le=50_000)
    #: ``delete`` relayed rows, or ``mark`` them (``published_at``) and keep them.
    on_publish: Literal["delete", "mark"] = "delete"


def outbox_message(adapter: str, event_id: str, aggregate_type: str, aggregate_id: str,
                   event_type: str, payload: str | bytes, headers: Mapping[str, Any] | None,
                   created_at: dt.datetime) -> RoutedMessage:
    """One outbox event -> its routed CloudEvents message (pure).

    Shared by this adapter and the postgres adapter's ``outbox_tables``, so both publish
    byte-identical messages for the same row. ``payload`` is JSON text, placed in
    ``data`` unparsed (numbers keep their digits); ``created_at`` must be aware.
    """
    version, uri, headers = declared_schema(headers)
    ce: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": f"/cdc-bridge/{adapter}",
        "type": event_type,
        "subject": aggregate_id,
        "datacontenttype": "application/json",
        "time": created_at.astimezone(dt.UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "aggregatetype": aggregate_type,
        "aggregateid": aggregate_id,
    }
    if uri is not None:
        ce["dataschema"] = uri
    if version is not None:
        ce["schemaversion"] = version
    ce["data"] = orjson.Fragment(payload.encode() if isinstance(payload, str) else payload)
    hdrs = {str(k): " ".join(str(v).split()) for k, v in (headers or {}).items()
            if _HEADER_NAME.match(str(k)) and str(k).lower() != "nats-msg-id"}
    subject = f"{OUTBOX_TOKEN}.{subject_token(aggregate_type)}.{subject_token(event_type)}"
    return RoutedMessage(event_id, subject, orjson.dumps(ce), hdrs or None)


def to_message(row: tuple[Any, ...], adapter: str) -> RoutedMessage:
    """One row of :meth:`OutboxTableAdapter._read` -> its routed message (pure)."""
    _seq, eid, agg_type, agg_id, ev_type, payload, headers, created = row
    return outbox_message(adapter, str(eid), agg_type, agg_id, ev_type, payload, headers,
                          created)


class OutboxTableAdapter:
    def __init__(self, config: OutboxTableConfig, context: AdapterContext) -> None:
        self.name = config.name
        self.config = config
        self.table = table_identifier(config.table)
        self.conn: psycopg.Connection[Any] | None = None
        self._unacked: list[int] = []
        #: Reached the table and relaying it (see the source contract).
        self.connected = False

    # -- blocking parts (run in a thread) ---------------------------------------------

    def _open(self) -> None:
        try:
            self.conn = psycopg.connect(self.config.dsn, autocommit=True, connect_timeout=10,
                                        application_name=f"cdc-bridge-{self.name}")
        except psycopg.OperationalError as e:
            raise SourceUnavailable(f"cannot reach the outbox database: {type(e).__name__}") \
                from None
        row = self.conn.execute("SELECT to_regclass(%s)", (self.config.table,)).fetchone()
        if row is None or row[0] is None:
            raise SourceSetupError(f"outbox table {self.config.table!r} does not exist "
                                   "(create it with cdc_bridge.client.outbox.create_outbox_table "
                                   "or "
                                   "cdc-bridge init)")

    def _read(self) -> list[tuple[Any, ...]]:
        assert self.conn is not None
        where = "published_at IS NULL" if self.config.on_publish == "mark" else "true"
        query = sql.SQL(
            "SELECT seq, id, aggregate_type, aggregate_id, event_type, payload::text, headers,"
            " created_at FROM {t} WHERE " + where + " ORDER BY seq LIMIT %s"
        ).format(t=self.table)
        rows: list[tuple[Any, ...]] = self._run(
            lambda c: c.execute(query, (self.config.batch_size,)).fetchall())
        return rows

    def _settle(self, seqs: list[int]) -> None:
        if self.config.on_publish == "delete":
            query = sql.SQL("DELETE FROM {t} WHERE seq = ANY(%s)").format(t=self.table)
        else:
            query = sql.SQL("UPDATE {t} SET published_at = now() WHERE seq = ANY(%s)").format(
                t=self.table)
        self._run(lambda c: c.execute(query, (seqs,)))

    def _run(self, fn: Any) -> Any:
        assert self.conn is not None
        try:
            return fn(self.conn)
        except psycopg.OperationalError as e:
            raise SourceUnavailable(f"outbox database error: {type(e).__name__}") from None
        except psycopg.errors.InsufficientPrivilege as e:
            raise SourceSetupError(f"outbox table {self.config.table}: {e}") from None
        except psycopg.Error as e:
            raise SourceUnavailable(f"outbox query failed: {type(e).__name__}: {e}") from e

    # -- the adapter protocol ---------------------------------------------------------

    async def changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        await asyncio.to_thread(self._open)
        self.connected = True
        log.info("%s: relaying outbox table %s (%s after publish)", self.name,
                 self.config.table, self.config.on_publish)
        while True:
            rows = await asyncio.to_thread(self._read)
            if rows:
                self._unacked = [int(r[0]) for r in rows]
                yield ChangeBatch(messages=[to_message(r, self.name) for r in rows],
                                  checkpoint={"seq": self._unacked[-1]})
            if len(rows) < self.config.batch_size:
                await asyncio.sleep(self.config.poll_interval)

    def lag(self) -> dict[str, float]:
        return {}

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        """The batch is in the bridge's outbox: delete (or mark) its rows."""
        seqs, self._unacked = self._unacked, []
        if seqs:
            await asyncio.to_thread(self._settle, seqs)

    async def init(self) -> list[str]:
        """``cdc-bridge init``: create the outbox table if it is missing."""
        def create() -> None:
            with psycopg.connect(self.config.dsn, autocommit=True) as conn:
                for stmt in ddl(self.config.table):
                    conn.execute(stmt)

        await asyncio.to_thread(create)
        return [f"outbox table {self.config.table} is ready"]

    async def close(self) -> None:
        self.connected = False
        if self.conn is not None:
            await asyncio.to_thread(self.conn.close)


def _factory(config: AdapterConfig, context: AdapterContext) -> OutboxTableAdapter:
    assert isinstance(config, OutboxTableConfig)
    return OutboxTableAdapter(config, context)


ADAPTER_TYPE = AdapterType("outbox_table", OutboxTableConfig, _factory)
