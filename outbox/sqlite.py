"""SQLite outbox store: the embedded default.

WAL mode so the relay reads while adapters append; ``synchronous=FULL`` so a commit
that acknowledged a source position (a replication slot's flush LSN) survives power
loss, not only ``kill -9``. ``seq`` is ``AUTOINCREMENT`` so it never goes back after
deletes, which the relay's cursor and the restart reconciliation rely on.

Each thread gets its own connection (SQLite connections are not shared across
threads); writers serialise on SQLite's lock with a generous busy timeout.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from outbox.base import OutboxMessage, PendingRow, StoreStats

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
"""


class SqliteStore:
    """:class:`outbox.base.OutboxStore` on one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        with conn:
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
            if row is None:
                store_id = str(uuid.uuid4())
                conn.execute("INSERT INTO meta(key, value) VALUES ('store_id', ?)", (store_id,))
            else:
                store_id = row[0]
        self.store_id: str = store_id

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def append(
        self, adapter: str, messages: list[OutboxMessage], checkpoint: dict[str, Any] | None
    ) -> int:
        conn = self._conn()
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
            last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(last)

    def checkpoint(self, adapter: str) -> dict[str, Any] | None:
        row = self._conn().execute(
            "SELECT value FROM checkpoints WHERE adapter=?", (adapter,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def checkpoints(self) -> dict[str, dict[str, Any]]:
        rows = self._conn().execute("SELECT adapter, value FROM checkpoints").fetchall()
        return {a: json.loads(v) for a, v in rows}

    def pending(self, after_seq: int, limit: int) -> list[PendingRow]:
        rows = self._conn().execute(
            "SELECT seq, msg_id, subject, payload, headers, created_ms FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [
            PendingRow(seq, OutboxMessage(mid, subj, bytes(body),
                                          json.loads(h) if h else None, created))
            for seq, mid, subj, body, h, created in rows
        ]

    def remove(self, up_to_seq: int) -> int:
        cur = self._conn().execute("DELETE FROM outbox WHERE seq <= ?", (up_to_seq,))
        return cur.rowcount

    def stats(self) -> StoreStats:
        conn = self._conn()
        pending, oldest = conn.execute("SELECT COUNT(*), MIN(created_ms) FROM outbox").fetchone()
        size = 0
        for suffix in ("", "-wal"):
            try:
                size += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return StoreStats(int(pending), None if oldest is None else int(oldest), size)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.ProgrammingError:
                    pass
            self._all.clear()
        self._local = threading.local()
