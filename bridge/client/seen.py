"""Seen-stores for :mod:`cdc_bridge.client.consumer`: which event ids a handler applied.

JetStream delivers at least once (a lost ack, a redelivery after ``ack_wait``, a replay),
so a service needs "once per event id" on its side. A seen-store answers
:meth:`SeenStore.seen` before the handler runs and records the id with
:meth:`SeenStore.mark` after it succeeded.

To make the effect and the mark atomic, the SQL stores expose their connection
(``store.conn``): a handler that writes through it without committing gets its writes
committed together with the mark (``mark`` commits), or rolled back by
:meth:`SeenStore.discard` when it fails. A crash between the two then leaves neither.

Ids are namespaced by consumer name, so several consumers can share one database.
Implementations: :class:`MemorySeenStore` (bounded, for tests and idempotent handlers),
:class:`SqliteSeenStore`, :class:`PostgresSeenStore` (psycopg 3, async).
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol


class SeenStore(Protocol):
    async def seen(self, event_id: str) -> bool: ...

    async def mark(self, event_id: str) -> None:
        """Record ``event_id`` and commit (with the handler's uncommitted writes, if any)."""
        ...

    async def discard(self) -> None:
        """The handler failed: roll back its uncommitted writes."""
        ...


class MemorySeenStore:
    """The last ``capacity`` ids in memory (lost on restart)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    async def seen(self, event_id: str) -> bool:
        return event_id in self._ids

    async def mark(self, event_id: str) -> None:
        self._ids[event_id] = None
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    async def discard(self) -> None:
        return None


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS cdc_seen (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
)
"""


class SqliteSeenStore:
    """Ids in a ``cdc_seen`` table of a SQLite database (yours, or a file of its own).

    Calls are synchronous (local SQLite statements take microseconds).
    """

    def __init__(self, conn: sqlite3.Connection | str | Path, consumer: str) -> None:
        if isinstance(conn, sqlite3.Connection):
            self.conn = conn
        else:
            self.conn = sqlite3.connect(conn, timeout=30)
        self.consumer = consumer
        self.conn.execute(_SQLITE_SCHEMA)
        self.conn.commit()

    async def seen(self, event_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM cdc_seen WHERE consumer=? AND event_id=?",
                                (self.consumer, event_id)).fetchone()
        return row is not None

    async def mark(self, event_id: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO cdc_seen(consumer, event_id, seen_ms)"
                          " VALUES (?, ?, ?)", (self.consumer, event_id, int(time.time() * 1000)))
        self.conn.commit()

    async def discard(self) -> None:
        self.conn.rollback()

    def forget_all(self) -> None:
        """Forget every id of this consumer (before rebuilding its read model)."""
        self.conn.execute("DELETE FROM cdc_seen WHERE consumer=?", (self.consumer,))
        self.conn.commit()


class PostgresSeenStore:
    """Ids in a ``cdc_seen`` table of PostgreSQL, on a psycopg ``AsyncConnection``.

    Create with :meth:`open`; the connection is not in autocommit mode, so a handler's
    writes through ``store.conn`` commit with the mark.
    """

    def __init__(self, conn: Any, consumer: str) -> None:
        self.conn = conn
        self.consumer = consumer

    @classmethod
    async def open(cls, dsn: str, consumer: str) -> PostgresSeenStore:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(dsn)
        await conn.execute("CREATE TABLE IF NOT EXISTS cdc_seen (consumer text NOT NULL,"
                           " event_id text NOT NULL, seen_at timestamptz NOT NULL DEFAULT now(),"
                           " PRIMARY KEY (consumer, event_id))")
        await conn.commit()
        return cls(conn, consumer)

    async def seen(self, event_id: str) -> bool:
        cur = await self.conn.execute(
            "SELECT 1 FROM cdc_seen WHERE consumer=%s AND event_id=%s", (self.consumer, event_id))
        return await cur.fetchone() is not None

    async def mark(self, event_id: str) -> None:
        await self.conn.execute(
            "INSERT INTO cdc_seen(consumer, event_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (self.consumer, event_id))
        await self.conn.commit()

    async def discard(self) -> None:
        await self.conn.rollback()

    async def close(self) -> None:
        await self.conn.close()
