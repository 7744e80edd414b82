"""The control channel between the CLI and a running daemon: one small SQLite file.

``state_dir/control.db`` holds two tables:

- ``requests``: operator requests for the daemon (today: ``snapshot``, with the
  ``where`` of a partial backfill, ``where_expr``, added to older files on open). The CLI inserts
  a row (``pending``); the daemon claims it (``running``), works on it, updates its
  progress (``events``) and finishes it (``done`` or ``failed`` with a message). The CLI
  polls the row to draw its progress bar. A file in the state directory works whether
  or not the HTTP endpoint is enabled, survives a daemon restart (a pending request is
  picked up when the daemon comes back), and needs no port.
- ``daemon``: one row the daemon rewrites every couple of seconds with its live state
  (per-adapter state, counters, lag). ``cdc-bridge status`` reads it; a row older than
  a few heartbeats means the daemon is not running.

Everything here is synchronous and short; the daemon calls it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    adapter TEXT NOT NULL,
    tables TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    events INTEGER NOT NULL DEFAULT 0,
    message TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    where_expr TEXT
);
CREATE TABLE IF NOT EXISTS daemon (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    pid INTEGER NOT NULL,
    started_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    state TEXT NOT NULL
);
"""

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
FINISHED = frozenset({DONE, FAILED})


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    kind: str
    adapter: str
    tables: list[str] | None
    status: str
    events: int
    message: str | None
    created_ms: int
    updated_ms: int
    #: A partial backfill's ``where`` (``None``: every row).
    where: str | None = None


@dataclass(frozen=True, slots=True)
class DaemonSnapshot:
    """The daemon's last published state and how old it is."""

    pid: int
    started_ms: int
    updated_ms: int
    state: dict[str, Any]

    def age_s(self) -> float:
        return max(0.0, (_now_ms() - self.updated_ms) / 1000)


def control_path(state_dir: Path) -> Path:
    return state_dir / "control.db"


class ControlDb:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        try:
            with conn:
                conn.executescript(_SCHEMA)
                cols = {r[1] for r in conn.execute("PRAGMA table_info(requests)")}
                if "where_expr" not in cols:  # a control file from before --where
                    try:
                        conn.execute("ALTER TABLE requests ADD COLUMN where_expr TEXT")
                    except sqlite3.OperationalError as e:  # another process was first
                        if "duplicate column" not in str(e):
                            raise
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._connect()
        try:
            with conn:
                return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    # -- requests ---------------------------------------------------------------------

    def submit(self, kind: str, adapter: str, tables: list[str] | None,
               where: str | None = None) -> int:
        now = _now_ms()
        conn = self._connect()
        try:
            with conn:
                cur = conn.execute(
                    "INSERT INTO requests(kind, adapter, tables, created_ms, updated_ms,"
                    " where_expr) VALUES (?, ?, ?, ?, ?, ?)",
                    (kind, adapter, json.dumps(tables) if tables else None, now, now, where))
                return int(cur.lastrowid or 0)
        finally:
            conn.close()

    def get(self, request_id: int) -> Request | None:
        rows = self._run("SELECT id, kind, adapter, tables, status, events, message, created_ms,"
                         " updated_ms, where_expr FROM requests WHERE id=?", (request_id,))
        return _request(rows[0]) if rows else None

    def recent(self, kind: str, limit: int = 10) -> list[Request]:
        """The latest ``limit`` requests of ``kind``, newest first (the status page)."""
        rows = self._run("SELECT id, kind, adapter, tables, status, events, message, created_ms,"
                         " updated_ms, where_expr FROM requests WHERE kind=?"
                         " ORDER BY id DESC LIMIT ?",
                         (kind, limit))
        return [_request(r) for r in rows]

    def claim_pending(self) -> list[Request]:
        """Mark every pending request running and return them (oldest first)."""
        conn = self._connect()
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                rows = conn.execute(
                    "SELECT id, kind, adapter, tables, status, events, message, created_ms,"
                    " updated_ms, where_expr FROM requests WHERE status=? ORDER BY id",
                    (PENDING,)).fetchall()
                conn.execute("UPDATE requests SET status=?, updated_ms=? WHERE status=?",
                             (RUNNING, _now_ms(), PENDING))
        finally:
            conn.close()
        return [_request((*r[:4], RUNNING, *r[5:])) for r in rows]

    def requeue_running(self) -> list[int]:
        """Put requests left ``running`` (by a daemon that died) back to ``pending``."""
        rows = self._run("UPDATE requests SET status=?, updated_ms=? WHERE status=?"
                         " RETURNING id", (PENDING, _now_ms(), RUNNING))
        return [int(r[0]) for r in rows]

    def update(self, request_id: int, *, status: str | None = None, events: int | None = None,
               message: str | None = None) -> None:
        self._run(
            "UPDATE requests SET status=COALESCE(?, status), events=COALESCE(?, events),"
            " message=COALESCE(?, message), updated_ms=? WHERE id=?",
            (status, events, message, _now_ms(), request_id))

    # -- daemon state -----------------------------------------------------------------

    def publish_state(self, started_ms: int, state: dict[str, Any]) -> None:
        now = _now_ms()
        self._run(
            "INSERT INTO daemon(id, pid, started_ms, updated_ms, state) VALUES (1, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET pid=excluded.pid, started_ms=excluded.started_ms,"
            " updated_ms=excluded.updated_ms, state=excluded.state",
            (os.getpid(), started_ms, now, json.dumps(state, default=str)))

    def clear_state(self) -> None:
        self._run("DELETE FROM daemon WHERE pid=?", (os.getpid(),))

    def read_state(self) -> DaemonSnapshot | None:
        rows = self._run("SELECT pid, started_ms, updated_ms, state FROM daemon WHERE id=1")
        if not rows:
            return None
        pid, started, updated, state = rows[0]
        return DaemonSnapshot(int(pid), int(started), int(updated), json.loads(state))


def _request(row: tuple[Any, ...]) -> Request:
    rid, kind, adapter, tables, status, events, message, created, updated, where = row
    return Request(int(rid), kind, adapter, json.loads(tables) if tables else None, status,
                   int(events), message, int(created), int(updated), where)
