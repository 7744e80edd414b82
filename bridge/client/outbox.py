"""The application-side outbox: for services that own a PostgreSQL database.

A service records a domain event in the SAME transaction as the state change it
describes, by inserting one row into its outbox table::

    with conn.transaction():
        conn.execute("UPDATE orders SET status = 'paid' WHERE id = %s", (order_id,))
        write_event(conn, "order", order_id, "paid", {"id": order_id, "amount": "12.50"})

If the transaction rolls back, the event never existed; if it commits, the bridge's
``type: outbox_table`` adapter (:mod:`cdc_bridge.adapters.outbox_table`) relays it to
``<prefix>.outbox.<aggregate_type>.<event_type>`` exactly once, then deletes the row
(or marks it published), like Debezium's outbox event router.

The table (:func:`create_outbox_table`, or ``cdc-bridge init``): ``seq`` orders events
as they were written; ``id`` (a UUID, generated here unless given) becomes the
CloudEvents id and the ``Nats-Msg-Id``; ``payload`` is JSON; ``headers`` become NATS
headers. A partial index keeps the unpublished rows cheap to find in ``mark`` mode.

The postgres adapter can relay the same table by logical replication instead
(``outbox_tables``): it publishes each inserted row from the WAL, so ``delete=True``
may remove the row again in the same transaction and the table stays empty. Never
with ``type: outbox_table``, which reads rows and would see none.

Schemas: the application may declare what its payload follows, ``schema_version=3``
and/or ``dataschema="https://example.com/schemas/order-paid/3"`` (any absolute URI). They
travel in the row's ``headers`` under :data:`SCHEMA_VERSION_HEADER` and
:data:`DATASCHEMA_HEADER` (so the table needs no new column, and an application that
writes the table by other means sets those two keys), and the bridge publishes them as
the CloudEvents ``dataschema`` attribute and the ``schemaversion`` extension attribute
(an integer), not as NATS headers. Events without them are published as before.

Works with psycopg 3 connections, cursors (:func:`write_event`) and async connections
(:func:`write_event_async`); nothing here commits.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Protocol

from psycopg import sql

from cdc_bridge.kernel.events import dumps
from cdc_bridge.kernel.outbox_table import DEFAULT_TABLE, ddl, table_identifier

__all__ = ["DATASCHEMA_HEADER", "DEFAULT_TABLE", "SCHEMA_VERSION_HEADER", "create_outbox_table",
           "write_event", "write_event_async"]

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
#: The row's ``headers`` keys of a declared schema (the relay reads them under these
#: names: :mod:`cdc_bridge.adapters.outbox_table` keeps the same two).
SCHEMA_VERSION_HEADER = "Cdc-Schema-Version"
DATASCHEMA_HEADER = "Cdc-Dataschema"
_RESERVED_HEADERS = frozenset({"nats-msg-id", "nats-expected-stream", "nats-ttl",
                               SCHEMA_VERSION_HEADER.lower(), DATASCHEMA_HEADER.lower()})
#: An absolute URI: a scheme, a colon, then no blank or control character.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:[^\s\x00-\x1f\x7f]+$")


class _Executes(Protocol):
    def execute(self, query: Any, params: Any = ..., /) -> Any: ...


class _AsyncExecutes(Protocol):
    async def execute(self, query: Any, params: Any = ..., /) -> Any: ...


def create_outbox_table(conn: _Executes, table: str = DEFAULT_TABLE) -> None:
    """Create the outbox table if missing (in the caller's transaction)."""
    for stmt in ddl(table):
        conn.execute(stmt)


def _delete(table: str, event_id: str) -> tuple[sql.Composed, tuple[Any, ...]]:
    return (sql.SQL("DELETE FROM {t} WHERE id = %s").format(t=table_identifier(table)),
            (event_id,))


def schema_headers(schema_version: int | None, dataschema: str | None) -> dict[str, str]:
    """The row headers declaring a schema (empty when nothing is declared); raises
    ``ValueError`` for a version that is not a positive integer or a URI that is not
    absolute."""
    out: dict[str, str] = {}
    if schema_version is not None:
        if isinstance(schema_version, bool) or not isinstance(schema_version, int) \
                or schema_version < 1:
            raise ValueError(f"schema_version must be a positive integer, not "
                             f"{schema_version!r}")
        out[SCHEMA_VERSION_HEADER] = str(schema_version)
    if dataschema is not None:
        if not isinstance(dataschema, str) or not _URI.match(dataschema) \
                or len(dataschema) > 2048:
            raise ValueError(f"dataschema must be an absolute URI, not {dataschema!r}")
        out[DATASCHEMA_HEADER] = dataschema
    return out


def _insert(table: str, aggregate_type: str, aggregate_id: str | int, event_type: str,
            payload: Any, headers: dict[str, str] | None,
            event_id: str | uuid.UUID | None, schema_version: int | None = None,
            dataschema: str | None = None) -> tuple[sql.Composed, tuple[Any, ...], str]:
    if not aggregate_type or not event_type:
        raise ValueError("aggregate_type and event_type must not be empty")
    if headers:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name) or name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"invalid or reserved header name {name!r}")
            if not isinstance(value, str) or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} must be a one-line string")
    declared = schema_headers(schema_version, dataschema)
    if declared:
        headers = {**(headers or {}), **declared}
    eid = str(uuid.UUID(str(event_id))) if event_id is not None else str(uuid.uuid4())
    query = sql.SQL(
        "INSERT INTO {t} (id, aggregate_type, aggregate_id, event_type, payload, headers)"
        " VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb)").format(t=table_identifier(table))
    params = (eid, aggregate_type, str(aggregate_id), event_type, dumps(payload).decode(),
              dumps(headers).decode() if headers else None)
    return query, params, eid


def write_event(conn: _Executes, aggregate_type: str, aggregate_id: str | int, event_type: str,
                payload: Any, headers: dict[str, str] | None = None, *,
                table: str = DEFAULT_TABLE, event_id: str | uuid.UUID | None = None,
                delete: bool = False, schema_version: int | None = None,
                dataschema: str | None = None) -> str:
    """Insert one event into the outbox table inside the caller's transaction.

    ``payload`` is any JSON-able value (decimals become strings, bytes base64).
    ``delete=True`` deletes the row again right away, in the same transaction: only for
    a table relayed by replication (the postgres adapter's ``outbox_tables``), which
    publishes the insert from the WAL; a polling relay would never see the event.
    ``schema_version`` (a positive integer) and ``dataschema`` (an absolute URI) declare
    the payload's schema: the published CloudEvent carries them as ``schemaversion``
    and ``dataschema``. Returns the event id. Raises ``ValueError`` for an empty type, a
    bad or reserved header, or a bad version or URI.
    """
    query, params, eid = _insert(table, aggregate_type, aggregate_id, event_type, payload,
                                 headers, event_id, schema_version, dataschema)
    conn.execute(query, params)
    if delete:
        conn.execute(*_delete(table, eid))
    return eid


async def write_event_async(conn: _AsyncExecutes, aggregate_type: str,
                            aggregate_id: str | int, event_type: str, payload: Any,
                            headers: dict[str, str] | None = None, *,
                            table: str = DEFAULT_TABLE,
                            event_id: str | uuid.UUID | None = None,
                            delete: bool = False, schema_version: int | None = None,
                            dataschema: str | None = None) -> str:
    """:func:`write_event` for ``psycopg.AsyncConnection`` / ``AsyncCursor``."""
    query, params, eid = _insert(table, aggregate_type, aggregate_id, event_type, payload,
                                 headers, event_id, schema_version, dataschema)
    await conn.execute(query, params)
    if delete:
        await conn.execute(*_delete(table, eid))
    return eid
