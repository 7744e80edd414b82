"""SQLite outbox store: the embedded default.

WAL mode so the relay reads while adapters append. Appends run with
``synchronous=FULL`` so a commit that acknowledged a source position (a replication
slot's flush LSN) survives power loss, not only ``kill -9``; deletes of published rows
run with ``synchronous=NORMAL`` (a delete lost to power loss only means a republish,
which the stream's duplicate window drops), which saves an fsync per relay round.

``seq`` is ``AUTOINCREMENT``: it never goes back after deletes, and since appends are
serialised (``BEGIN IMMEDIATE``), a rolled-back append gives its numbers back and
deletes only ever take a prefix, the pending rows are exactly ``first..last``.

Space: the database is created with ``auto_vacuum=INCREMENTAL`` and
:meth:`SqliteStore.compact` frees the pages of deleted rows and truncates the WAL
(``journal_size_limit`` also caps it after every checkpoint), so the files do not grow
without bound. A database created without incremental vacuum is converted by one
``VACUUM`` on open if it is small, otherwise left as is with a log line.

Each thread gets its own connection (SQLite connections are not shared across
threads); writers serialise on SQLite's lock with a generous busy timeout.

A full disk: appends fail with a retryable error (capture waits, nothing is lost), but
deleting published rows needs room too (WAL frames, and a checkpoint that copies the
WAL into the database file). So the store keeps a reserve file beside the database
(``outbox.db.reserve``, :data:`RESERVE_BYTES`): when a delete or a compaction finds
the disk full, the reserve is given back, the WAL checkpointed and truncated, the
published rows deleted and the file shrunk; the reserve is taken again once the disk
has room for it twice over. Capture resumes by itself as soon as appends fit again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from cdc_bridge.outbox.base import (
    HeldRow,
    OutboxMessage,
    PendingRow,
    SchemaState,
    StoreDamaged,
    StoreStats,
    StoreUnavailable,
)

log = logging.getLogger("cdc_bridge.outbox")
_T = TypeVar("_T")
_P = ParamSpec("_P")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    adapter TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS schemas (
    adapter TEXT NOT NULL,
    tbl TEXT NOT NULL,
    version INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    entry TEXT NOT NULL,
    paused TEXT,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (adapter, tbl)
);
CREATE TABLE IF NOT EXISTS held (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    adapter TEXT NOT NULL,
    tbl TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT,
    created_ms INTEGER NOT NULL
);
"""
#: Largest database converted to incremental vacuum on open (VACUUM rewrites the file).
_CONVERT_LIMIT_BYTES = 256 * 1024 * 1024
_WAL_LIMIT_BYTES = 64 * 1024 * 1024
_VACUUM_PAGES_PER_CALL = 20_000
#: Space kept aside for deleting published rows on a full disk (see the module docstring).
RESERVE_BYTES = 32 * 1024 * 1024


_DAMAGED = ("malformed", "not a database", "database corrupt")


def _damaged(path: Path, e: sqlite3.DatabaseError) -> StoreDamaged | None:
    if not any(w in str(e).lower() for w in _DAMAGED):
        return None
    return StoreDamaged(
        f"outbox {path} is damaged ({e}): nothing in it can be trusted. Stop the bridge, "
        f"move {path} (and its -wal and -shm files) aside, and start again: each source "
        "then starts over from no checkpoint (the postgres source refuses while its "
        "replication slot still exists: see docs/outbox.md, 'A lost or damaged outbox')")


def _guard(method: Callable[Concatenate[SqliteStore, _P], _T]
           ) -> Callable[Concatenate[SqliteStore, _P], _T]:
    """Turn a damaged file's error into :class:`StoreDamaged` (fatal, with the way out)."""
    def guarded(self: SqliteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as e:
            damaged = _damaged(self.path, e)
            if damaged is not None:
                raise damaged from e
            raise

    guarded.__doc__, guarded.__name__ = method.__doc__, method.__name__
    return guarded


def _disk_full(e: BaseException) -> bool:
    return isinstance(e, sqlite3.OperationalError) and "full" in str(e).lower()


def _transient(e: sqlite3.OperationalError) -> bool:
    """Errors that go away by themselves: a full disk, a locked database, an I/O hiccup."""
    text = str(e).lower()
    return any(w in text for w in ("disk is full", "database is locked", "disk i/o error"))


class SqliteStore:
    """:class:`cdc_bridge.outbox.base.OutboxStore` on one SQLite file."""

    @_guard
    def __init__(self, path: str | Path, reserve_bytes: int = RESERVE_BYTES) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.reserve_path = Path(f"{self.path}.reserve")
        self.reserve_bytes = reserve_bytes
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        self._ensure_incremental_vacuum(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(stmt)
            row = conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
            if row is None:
                store_id = str(uuid.uuid4())
                conn.execute("INSERT INTO meta(key, value) VALUES ('store_id', ?)", (store_id,))
            else:
                store_id = row[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self.store_id: str = store_id
        self._take_reserve()

    # -- the reserve for a full disk ---------------------------------------------------

    def _take_reserve(self) -> None:
        """Create the reserve file if it is missing and the disk has room for it twice."""
        if self.reserve_bytes <= 0 or self.reserve_path.exists():
            return
        try:
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < 2 * self.reserve_bytes:
                return
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, self.reserve_bytes)
        except OSError:
            os.close(fd)
            self.reserve_path.unlink(missing_ok=True)
            return
        os.close(fd)

    def _give_back_reserve(self) -> bool:
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        log.warning("outbox %s: the disk is full; gave back the %d MiB reserve to delete "
                    "published rows", self.path, self.reserve_bytes >> 20)
        return True

    def _make_room(self, conn: sqlite3.Connection) -> None:
        """On a full disk: reserve back, WAL into the database file and truncated."""
        self._give_back_reserve()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only a new file: before WAL
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            self._local.sync = "FULL"
            with self._lock:
                self._all.append(conn)
        return conn

    def _sync(self, conn: sqlite3.Connection, mode: str) -> None:
        if self._local.sync != mode:
            conn.execute(f"PRAGMA synchronous={mode}")
            self._local.sync = mode

    def _ensure_incremental_vacuum(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return
        size = os.path.getsize(self.path) if self.path.exists() else 0
        if size > _CONVERT_LIMIT_BYTES:
            log.warning("outbox %s (%d bytes) has no incremental vacuum; run VACUUM offline "
                        "to let it shrink", self.path, size)
            return
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
        log.info("outbox %s converted to incremental vacuum", self.path)

    @_guard
    def append(
        self, adapter: str, messages: list[OutboxMessage], checkpoint: dict[str, Any] | None,
        schemas: Sequence[SchemaState] = (), held: Sequence[HeldRow] = (),
    ) -> int:
        conn = self._conn()
        self._sync(conn, "FULL")
        now = int(time.time() * 1000)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO outbox(msg_id, subject, payload, headers, created_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (m.msg_id, m.subject, m.payload,
                     json.dumps(m.headers) if m.headers else None, m.created_ms or now)
                    for m in messages
                ],
            )
            if checkpoint is not None:
                conn.execute(
                    "INSERT INTO checkpoints(adapter, value, updated_ms) VALUES (?, ?, ?)"
                    " ON CONFLICT(adapter) DO UPDATE SET value=excluded.value,"
                    " updated_ms=excluded.updated_ms",
                    (adapter, json.dumps(checkpoint), now),
                )
            if schemas or held:
                self._schemas_and_held(conn, adapter, schemas, held, now)
            last = self._last_seq(conn)
            conn.execute("COMMIT")
        except BaseException as e:
            # SQLite may already have rolled back (a failed COMMIT on a full disk)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError) and _transient(e):
                raise StoreUnavailable(f"outbox {self.path}: {e}; retrying") from e
            raise
        return last

    @staticmethod
    def _schemas_and_held(conn: sqlite3.Connection, adapter: str,
                          schemas: Sequence[SchemaState], held: Sequence[HeldRow],
                          now: int) -> None:
        conn.executemany(
            "INSERT INTO schemas(adapter, tbl, version, fingerprint, entry, paused,"
            " updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(adapter, tbl) DO UPDATE"
            " SET version=excluded.version, fingerprint=excluded.fingerprint,"
            " entry=excluded.entry, paused=excluded.paused, updated_ms=excluded.updated_ms",
            [(adapter, st.table, st.version, st.fingerprint, json.dumps(st.entry), st.paused,
              now) for st in schemas])
        if not held:
            return
        paused = {t for (t,) in conn.execute(
            "SELECT tbl FROM schemas WHERE adapter=? AND paused IS NOT NULL", (adapter,))}
        for tbl, m in held:  # a table released meanwhile (another process): pending
            conn.execute(
                "INSERT INTO held(adapter, tbl, msg_id, subject, payload, headers, created_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)" if tbl in paused else
                "INSERT INTO outbox(msg_id, subject, payload, headers, created_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                ((adapter, tbl) if tbl in paused else ())
                + (m.msg_id, m.subject, m.payload,
                   json.dumps(m.headers) if m.headers else None, m.created_ms or now))

    @_guard
    def schema_states(self, adapter: str | None = None) -> list[tuple[str, SchemaState]]:
        query = "SELECT adapter, tbl, version, fingerprint, entry, paused FROM schemas"
        rows = (self._conn().execute(query + " WHERE adapter=? ORDER BY tbl", (adapter,))
                if adapter is not None else
                self._conn().execute(query + " ORDER BY adapter, tbl")).fetchall()
        return [(a, SchemaState(t, int(v), f, json.loads(e), p)) for a, t, v, f, e, p in rows]

    @_guard
    def release(self, adapter: str, table: str) -> int:
        conn = self._conn()
        self._sync(conn, "FULL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = conn.execute("UPDATE schemas SET paused=NULL WHERE adapter=? AND tbl=?",
                                 (adapter, table)).rowcount
            if not found:
                raise KeyError(f"{adapter}: no schema of table {table!r}")
            moved = conn.execute(
                "INSERT INTO outbox(msg_id, subject, payload, headers, created_ms)"
                " SELECT msg_id, subject, payload, headers, created_ms FROM held"
                " WHERE adapter=? AND tbl=? ORDER BY n", (adapter, table)).rowcount
            conn.execute("DELETE FROM held WHERE adapter=? AND tbl=?", (adapter, table))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return moved

    @_guard
    def held_counts(self) -> dict[tuple[str, str], int]:
        rows = self._conn().execute(
            "SELECT adapter, tbl, count(*) FROM held GROUP BY adapter, tbl").fetchall()
        return {(a, t): int(n) for a, t, n in rows}

    @staticmethod
    def _last_seq(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return 0 if row is None else int(row[0])

    @_guard
    def checkpoint(self, adapter: str) -> dict[str, Any] | None:
        row = self._conn().execute(
            "SELECT value FROM checkpoints WHERE adapter=?", (adapter,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    @_guard
    def checkpoints(self) -> dict[str, dict[str, Any]]:
        rows = self._conn().execute("SELECT adapter, value FROM checkpoints").fetchall()
        return {a: json.loads(v) for a, v in rows}

    @_guard
    def forget(self, adapter: str) -> bool:
        conn = self._conn()
        self._sync(conn, "FULL")
        return conn.execute("DELETE FROM checkpoints WHERE adapter=?", (adapter,)).rowcount > 0

    @_guard
    def pending(self, after_seq: int, limit: int) -> list[PendingRow]:
        rows = self._conn().execute(
            "SELECT seq, msg_id, subject, payload, headers, created_ms FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [
            PendingRow(seq, OutboxMessage(mid, subj, body,
                                          json.loads(h) if h else None, created))
            for seq, mid, subj, body, h, created in rows
        ]

    @_guard
    def remove(self, up_to_seq: int) -> int:
        conn = self._conn()
        self._sync(conn, "NORMAL")
        try:
            return self._delete(conn, up_to_seq)
        except sqlite3.OperationalError as e:
            if not _disk_full(e):
                raise
        try:  # a full disk: make room with the reserve, delete, then shrink the file
            self._make_room(conn)
            removed = self._delete(conn, up_to_seq)
            self._shrink(conn)
        except sqlite3.OperationalError as e:
            if _disk_full(e):
                raise StoreUnavailable(f"outbox {self.path}: {e}; published rows are "
                                       "deleted once the disk has room") from e
            raise
        return removed

    @staticmethod
    def _delete(conn: sqlite3.Connection, up_to_seq: int) -> int:
        cur = conn.execute("DELETE FROM outbox WHERE seq <= ?", (up_to_seq,))
        return cur.rowcount

    def _shrink(self, conn: sqlite3.Connection) -> None:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        if free:
            # executescript steps the pragma to completion (execute() frees one page);
            # bounded so that one call never holds the write lock for long.
            conn.executescript(f"PRAGMA incremental_vacuum({_VACUUM_PAGES_PER_CALL});")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    @_guard
    def compact(self) -> None:
        conn = self._conn()
        try:
            self._shrink(conn)
        except sqlite3.OperationalError as e:
            if not _disk_full(e):
                raise
            self._make_room(conn)
            self._shrink(conn)
        self._take_reserve()

    @_guard
    def stats(self) -> StoreStats:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            first = conn.execute(
                "SELECT seq, created_ms FROM outbox ORDER BY seq LIMIT 1").fetchone()
            last = self._last_seq(conn)
        finally:
            conn.execute("COMMIT")
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                size += os.path.getsize(f"{self.path}{suffix}")
        if first is None:
            return StoreStats(0, None, size, 0, last)
        return StoreStats(last - first[0] + 1, int(first[1]), size, int(first[0]), last)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = threading.local()
