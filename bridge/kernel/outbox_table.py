"""The outbox-table contract shared by ``write_event`` (the client) and its sources.

A service inserts rows into this table in its own transactions
(:func:`cdc_bridge.client.outbox.write_event`); the ``outbox_table`` source polls it and
the ``postgres`` source reads its inserts from the WAL. Both sides build the table and
its identifiers from here. psycopg is imported only when a statement is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopg import sql

DEFAULT_TABLE = "cdc_outbox"

_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    seq bigserial PRIMARY KEY,
    id uuid NOT NULL UNIQUE,
    aggregate_type text NOT NULL CHECK (aggregate_type <> ''),
    aggregate_id text NOT NULL,
    event_type text NOT NULL CHECK (event_type <> ''),
    payload jsonb NOT NULL,
    headers jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (seq) WHERE published_at IS NULL
"""


def table_identifier(table: str) -> sql.Identifier:
    """``name`` or ``schema.name`` as a quoted identifier (never pasted as text)."""
    from psycopg import sql

    parts = table.split(".")
    if not 1 <= len(parts) <= 2 or not all(parts):
        raise ValueError(f"outbox table must be 'name' or 'schema.name', got {table!r}")
    return sql.Identifier(*parts)


def ddl(table: str = DEFAULT_TABLE) -> list[sql.Composed]:
    """The statements that create the outbox table and its index (idempotent)."""
    from psycopg import sql

    index = sql.Identifier(table.split(".")[-1] + "_unpublished")
    return [sql.SQL(stmt).format(table=table_identifier(table), index=index)
            for stmt in _DDL.split(";") if stmt.strip()]
