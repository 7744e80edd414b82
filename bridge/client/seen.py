"""Seen-stores for :mod:`cdc_bridge.client.consumer`: what a handler applied, and where
each key stands.

JetStream delivers at least once (a lost ack, a redelivery after ``ack_wait``, a replay),
so a service needs "once per event id" on its side, and several instances sharing one
durable consumer need a shared record of each key's progress to keep per-key order.
A store keeps two tables:

* ``cdc_seen (consumer, event_id, seen_ms)`` — the ids applied;
* ``cdc_key_seq (consumer, scope, okey, seq, at_ms)`` — per order key, the stream
  sequence of the last message of that key that is done (applied, skipped as a
  duplicate, or dead-lettered); ``scope`` is ``<stream>/<durable>``, since sequences
  only compare within one stream.

Every message is handled inside one :meth:`SeenStore.transaction`: read the key's
position (PostgreSQL locks its row, SQLite takes the write lock), check the id, run the
handler, record id and position, commit — so the handler's own writes through
``store.conn`` commit together with them, or roll back with them. A crash in between
leaves neither.

``store.conn`` is the connection of the transaction running in the current task (the
consumer runs handlers concurrently; each gets its own transaction). SQLite has one
writer at a time: :class:`SqliteSeenStore` runs transactions one after another (handlers
of different keys still overlap their work outside the database). PostgreSQL runs up to
``pool_size`` at once on connections of their own.

Ids are namespaced by consumer name, so several consumers can share one database.
:meth:`SeenStore.prune` forgets ids and key positions older than a cutoff (the consumer
derives it from the stream's ``max_age``).

Implementations: :class:`MemorySeenStore` (bounded, one process: tests and idempotent
handlers), :class:`SqliteSeenStore`, :class:`PostgresSeenStore` (psycopg 3, async; loaded
only when opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol


def _now_ms() -> int:
    return int(time.time() * 1000)


class SeenTx(Protocol):
    """One message's transaction (see the module docstring)."""

    async def last_seq(self, scope: str, okey: str) -> int:
        """The key's position (0 if none); PostgreSQL locks the key's row until the end."""
        ...

    async def seen(self, event_id: str) -> bool: ...

    async def done(self, scope: str, okey: str, seq: int, event_id: str | None) -> None:
        """Record ``event_id`` (if given) and move the key to ``seq`` (never back)."""
        ...


class SeenStore(Protocol):
    def transaction(self) -> contextlib.AbstractAsyncContextManager[SeenTx]:
        """Commits on a normal exit, rolls back (the handler's writes too) on an exception."""
        ...

    async def last_seq(self, scope: str, okey: str) -> int:
        """The key's committed position, outside any transaction (a hint)."""
        ...

    async def prune(self, before_ms: int, scope: str, floor_seq: int) -> int:
        """Forget ids seen before ``before_ms``, and key positions of ``scope`` recorded
        before it at or below ``floor_seq`` (the ack floor); returns rows removed."""
        ...


# -- memory ---------------------------------------------------------------------------


class _MemoryTx:
    def __init__(self, store: MemorySeenStore) -> None:
        self.store = store
        self.ids: list[str] = []
        self.keys: dict[tuple[str, str], int] = {}

    async def last_seq(self, scope: str, okey: str) -> int:
        return self.store.keys.get((scope, okey), (0, 0))[0]

    async def seen(self, event_id: str) -> bool:
        return event_id in self.store.ids

    async def done(self, scope: str, okey: str, seq: int, event_id: str | None) -> None:
        if event_id is not None:
            self.ids.append(event_id)
        k = (scope, okey)
        self.keys[k] = max(seq, self.keys.get(k, 0))


class MemorySeenStore:
    """The last ``capacity`` ids and every key's position in memory (lost on restart)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.ids: OrderedDict[str, int] = OrderedDict()
        self.keys: dict[tuple[str, str], tuple[int, int]] = {}

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SeenTx]:
        tx = _MemoryTx(self)
        yield tx
        now = _now_ms()
        for event_id in tx.ids:
            self.ids[event_id] = now
            self.ids.move_to_end(event_id)
        while len(self.ids) > self.capacity:
            self.ids.popitem(last=False)
        for k, seq in tx.keys.items():
            self.keys[k] = (max(seq, self.keys.get(k, (0, 0))[0]), now)

    async def last_seq(self, scope: str, okey: str) -> int:
        return self.keys.get((scope, okey), (0, 0))[0]

    async def prune(self, before_ms: int, scope: str, floor_seq: int) -> int:
        old = [i for i, at in self.ids.items() if at < before_ms]
        for i in old:
            del self.ids[i]
        stale = [k for k, (seq, at) in self.keys.items()
                 if k[0] == scope and at < before_ms and seq <= floor_seq]
        for k in stale:
            del self.keys[k]
        return len(old) + len(stale)

    # the 0.1 interface (one message at a time, no transaction object)
    async def seen(self, event_id: str) -> bool:
        return event_id in self.ids

    async def mark(self, event_id: str) -> None:
        self.ids[event_id] = _now_ms()
        self.ids.move_to_end(event_id)

    async def discard(self) -> None:
        return None


# -- SQLite ---------------------------------------------------------------------------

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS cdc_seen (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    seen_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX IF NOT EXISTS cdc_seen_age ON cdc_seen (consumer, seen_ms);
CREATE TABLE IF NOT EXISTS cdc_key_seq (
    consumer TEXT NOT NULL,
    scope TEXT NOT NULL,
    okey TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (consumer, scope, okey)
);
"""

#: One asyncio lock per database file in this process: two stores (two consumers) on one
#: file must not both hold SQLite's write lock, or the second would block the event loop
#: the first needs to finish.
_FILE_LOCKS: dict[tuple[str, int], asyncio.Lock] = {}


def _db_file(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return str(row[2]) if row and row[2] else f":memory:{id(conn)}"


class _SqliteTx:
    def __init__(self, store: SqliteSeenStore) -> None:
        self.conn = store.conn
        self.consumer = store.consumer

    async def last_seq(self, scope: str, okey: str) -> int:
        return _sqlite_last_seq(self.conn, self.consumer, scope, okey)

    async def seen(self, event_id: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM cdc_seen WHERE consumer=? AND event_id=?",
                                (self.consumer, event_id)).fetchone()
        return row is not None

    async def done(self, scope: str, okey: str, seq: int, event_id: str | None) -> None:
        now = _now_ms()
        if event_id is not None:
            self.conn.execute("INSERT OR IGNORE INTO cdc_seen(consumer, event_id, seen_ms)"
                              " VALUES (?, ?, ?)", (self.consumer, event_id, now))
        self.conn.execute(
            "INSERT INTO cdc_key_seq(consumer, scope, okey, seq, at_ms) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(consumer, scope, okey) DO UPDATE SET"
            " seq=MAX(seq, excluded.seq), at_ms=excluded.at_ms",
            (self.consumer, scope, okey, seq, now))


def _sqlite_last_seq(conn: sqlite3.Connection, consumer: str, scope: str, okey: str) -> int:
    row = conn.execute("SELECT seq FROM cdc_key_seq WHERE consumer=? AND scope=? AND okey=?",
                       (consumer, scope, okey)).fetchone()
    return 0 if row is None else int(row[0])


class SqliteSeenStore:
    """Ids and key positions in tables of a SQLite database (yours, or a file of its own).

    Calls are synchronous (local SQLite statements take microseconds); transactions run
    one at a time (``BEGIN IMMEDIATE``), also across stores on the same file in this
    process. Several processes may share the file (SQLite's lock, ``timeout`` seconds).
    """

    def __init__(self, conn: sqlite3.Connection | str | Path, consumer: str,
                 timeout_s: float = 30.0) -> None:
        if isinstance(conn, sqlite3.Connection):
            self.conn = conn
        else:
            self.conn = sqlite3.connect(conn, timeout=timeout_s)
            self.conn.execute("PRAGMA journal_mode=WAL")
        self.consumer = consumer
        if self.conn.in_transaction:
            self.conn.commit()
        self.conn.executescript(_SQLITE_SCHEMA)
        self.conn.commit()
        self._file = _db_file(self.conn)

    @property
    def _lock(self) -> asyncio.Lock:
        key = (self._file, id(asyncio.get_running_loop()))
        return _FILE_LOCKS.setdefault(key, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SeenTx]:
        async with self._lock:
            if self.conn.in_transaction:  # writes left uncommitted outside a message
                self.conn.commit()
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self)
            except BaseException:
                self.conn.rollback()
                raise
            self.conn.commit()

    async def last_seq(self, scope: str, okey: str) -> int:
        return _sqlite_last_seq(self.conn, self.consumer, scope, okey)

    async def prune(self, before_ms: int, scope: str, floor_seq: int) -> int:
        async with self._lock:
            n = self.conn.execute("DELETE FROM cdc_seen WHERE consumer=? AND seen_ms<?",
                                  (self.consumer, before_ms)).rowcount
            n += self.conn.execute(
                "DELETE FROM cdc_key_seq WHERE consumer=? AND scope=? AND at_ms<? AND seq<=?",
                (self.consumer, scope, before_ms, floor_seq)).rowcount
            self.conn.commit()
        return int(n)

    def forget_all(self) -> None:
        """Forget every id and key position of this consumer (before a rebuild)."""
        self.conn.execute("DELETE FROM cdc_seen WHERE consumer=?", (self.consumer,))
        self.conn.execute("DELETE FROM cdc_key_seq WHERE consumer=?", (self.consumer,))
        self.conn.commit()

    # the 0.1 interface (one message at a time, no transaction object)
    async def seen(self, event_id: str) -> bool:
        return await _SqliteTx(self).seen(event_id)

    async def mark(self, event_id: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO cdc_seen(consumer, event_id, seen_ms)"
                          " VALUES (?, ?, ?)", (self.consumer, event_id, _now_ms()))
        self.conn.commit()

    async def discard(self) -> None:
        self.conn.rollback()


# -- PostgreSQL -----------------------------------------------------------------------

_PG_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cdc_seen (consumer text NOT NULL, event_id text NOT NULL,"
    " seen_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (consumer, event_id))",
    "CREATE INDEX IF NOT EXISTS cdc_seen_age ON cdc_seen (consumer, seen_at)",
    "CREATE TABLE IF NOT EXISTS cdc_key_seq (consumer text NOT NULL, scope text NOT NULL,"
    " okey text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (consumer, scope, okey))",
)


class _PgTx:
    def __init__(self, conn: Any, consumer: str) -> None:
        self.conn = conn
        self.consumer = consumer

    async def last_seq(self, scope: str, okey: str) -> int:
        # the row exists after this (a concurrent insert of the same key waits for us),
        # and stays locked until the commit: one transaction per key at a time
        await self.conn.execute(
            "INSERT INTO cdc_key_seq(consumer, scope, okey, seq) VALUES (%s, %s, %s, 0)"
            " ON CONFLICT DO NOTHING", (self.consumer, scope, okey))
        cur = await self.conn.execute(
            "SELECT seq FROM cdc_key_seq WHERE consumer=%s AND scope=%s AND okey=%s"
            " FOR UPDATE", (self.consumer, scope, okey))
        row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def seen(self, event_id: str) -> bool:
        cur = await self.conn.execute(
            "SELECT 1 FROM cdc_seen WHERE consumer=%s AND event_id=%s", (self.consumer, event_id))
        return await cur.fetchone() is not None

    async def done(self, scope: str, okey: str, seq: int, event_id: str | None) -> None:
        if event_id is not None:
            await self.conn.execute(
                "INSERT INTO cdc_seen(consumer, event_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (self.consumer, event_id))
        await self.conn.execute(
            "INSERT INTO cdc_key_seq(consumer, scope, okey, seq) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (consumer, scope, okey) DO UPDATE SET"
            " seq=GREATEST(cdc_key_seq.seq, excluded.seq), at=now()",
            (self.consumer, scope, okey, seq))


class PostgresSeenStore:
    """Ids and key positions in tables of PostgreSQL, on psycopg ``AsyncConnection``\\ s.

    Create with :meth:`open` (``pool_size`` connections: that many handler transactions
    at once). No connection is in autocommit mode, so a handler's writes through
    ``store.conn`` (the connection of its own transaction) commit with the mark.
    """

    def __init__(self, conn: Any, consumer: str, extra: list[Any] | None = None) -> None:
        self._main = conn
        self.consumer = consumer
        self._pool: asyncio.Queue[Any] = asyncio.Queue()
        for c in [conn, *(extra or [])]:
            self._pool.put_nowait(c)
        self._all = [conn, *(extra or [])]
        self._current: contextvars.ContextVar[Any] = contextvars.ContextVar(
            f"cdc_seen_conn_{id(self)}", default=None)

    @property
    def conn(self) -> Any:
        """The connection of the current task's transaction (else the first one)."""
        current = self._current.get()
        return self._main if current is None else current

    @classmethod
    async def open(cls, dsn: str, consumer: str, pool_size: int = 1) -> PostgresSeenStore:
        import psycopg

        conns = [await psycopg.AsyncConnection.connect(dsn) for _ in range(max(1, pool_size))]
        for statement in _PG_SCHEMA:
            await conns[0].execute(statement)
        await conns[0].commit()
        return cls(conns[0], consumer, conns[1:])

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[SeenTx]:
        conn = await self._pool.get()
        token = self._current.set(conn)
        try:
            try:
                yield _PgTx(conn, self.consumer)
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()
        finally:
            self._current.reset(token)
            self._pool.put_nowait(conn)

    async def last_seq(self, scope: str, okey: str) -> int:
        async with self.transaction() as tx:
            cur = await self.conn.execute(
                "SELECT seq FROM cdc_key_seq WHERE consumer=%s AND scope=%s AND okey=%s",
                (self.consumer, scope, okey))
            row = await cur.fetchone()
            del tx
        return 0 if row is None else int(row[0])

    async def prune(self, before_ms: int, scope: str, floor_seq: int) -> int:
        async with self.transaction():
            conn = self.conn
            cur = await conn.execute(
                "DELETE FROM cdc_seen WHERE consumer=%s AND seen_at < to_timestamp(%s/1000.0)",
                (self.consumer, before_ms))
            n = cur.rowcount
            cur = await conn.execute(
                "DELETE FROM cdc_key_seq WHERE consumer=%s AND scope=%s AND seq<=%s"
                " AND at < to_timestamp(%s/1000.0)", (self.consumer, scope, floor_seq, before_ms))
            n += cur.rowcount
        return int(n)

    # the 0.1 interface (one message at a time, no transaction object)
    async def seen(self, event_id: str) -> bool:
        return await _PgTx(self.conn, self.consumer).seen(event_id)

    async def mark(self, event_id: str) -> None:
        await self.conn.execute(
            "INSERT INTO cdc_seen(consumer, event_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (self.consumer, event_id))
        await self.conn.commit()

    async def discard(self) -> None:
        await self.conn.rollback()

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()

