"""The diff mode's memory of what each row looked like: a SQLite file per adapter.

A 1,000,000-row table's hashes cannot live in the JSON checkpoint, so they live in
``<state_dir>/sql_poll/<adapter>.db``, one row per source key::

    rows(tbl, key, hash, image, step, old_hash, old_image, old_step, seen)

``key`` is the key as compact JSON, ``hash`` the BLAKE2b-128 of the last emitted row
image, ``image`` that image itself (for ``before``; NULL when ``before_images: false``),
``hash IS NULL`` a tombstone (the row was deleted).

Crash safety without a two-phase commit across two databases: every diff chunk is a
numbered *step*. A chunk's state changes are written (and committed here) *before* its
events are committed to the outbox, tagged with the step, keeping the previous value in
``old_*``; the outbox checkpoint names the last step it committed. On start,
:meth:`DiffState.rollback` undoes every change tagged with a later step (the outbox
never got those events), so the chunk is diffed again and yields the same events. A
step at or below the checkpoint is committed in both places. ``seen`` is the step in
which the key was last read from the source: keys not read during a pass are deletes.

If the file is lost or replaced (its ``state_id`` differs from the checkpoint's), the
table is re-snapshotted with ``op: r`` rather than reported as all-new. ``synchronous =
NORMAL``: a power cut may lose the newest steps here while the outbox kept them; the
next pass then re-emits those changes (duplicates, never losses).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    hash BLOB,
    image BLOB,
    step INTEGER NOT NULL,
    old_hash BLOB,
    old_image BLOB,
    old_step INTEGER,
    seen INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
"""
_LOOKUP_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Stored:
    hash: bytes | None
    image: bytes | None


@dataclass(frozen=True, slots=True)
class Write:
    """New value of one key in one step (``hash=None``: deleted)."""

    key: str
    hash: bytes | None
    image: bytes | None


class DiffState:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)
        row = self.conn.execute("SELECT value FROM meta WHERE key='state_id'").fetchone()
        if row is None:
            self.state_id = str(uuid.uuid4())
            self.conn.execute("INSERT INTO meta VALUES ('state_id', ?)", (self.state_id,))
        else:
            self.state_id = str(row[0])

    def close(self) -> None:
        self.conn.close()

    def clear(self, tbl: str) -> None:
        self.conn.execute("DELETE FROM rows WHERE tbl = ?", (tbl,))

    def rollback(self, tbl: str, committed_step: int) -> int:
        """Undo every change of steps after ``committed_step``; returns rows undone."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            n = c.execute("DELETE FROM rows WHERE tbl = ? AND step > ? AND old_step IS NULL",
                          (tbl, committed_step)).rowcount
            n += c.execute(
                "UPDATE rows SET hash = old_hash, image = old_image, step = old_step, "
                "old_hash = NULL, old_image = NULL, old_step = NULL "
                "WHERE tbl = ? AND step > ?", (tbl, committed_step)).rowcount
            c.execute("UPDATE rows SET seen = 0 WHERE tbl = ? AND seen > ?",
                      (tbl, committed_step))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return n

    def purge_tombstones(self, tbl: str, committed_step: int) -> None:
        self.conn.execute("DELETE FROM rows WHERE tbl = ? AND hash IS NULL AND step <= ?",
                          (tbl, committed_step))

    def lookup(self, tbl: str, keys: Sequence[str]) -> dict[str, Stored]:
        out: dict[str, Stored] = {}
        for i in range(0, len(keys), _LOOKUP_CHUNK):
            part = keys[i:i + _LOOKUP_CHUNK]
            marks = ",".join("?" * len(part))
            for key, h, image in self.conn.execute(
                    f"SELECT key, hash, image FROM rows WHERE tbl = ? AND key IN ({marks})",
                    (tbl, *part)):
                out[key] = Stored(h, image)
        return out

    def unseen(self, tbl: str, pass_start: int, after: str | None,
               limit: int) -> list[tuple[str, Stored]]:
        """Live keys not read from the source since ``pass_start`` (deleted), key order."""
        rows = self.conn.execute(
            "SELECT key, hash, image FROM rows WHERE tbl = ? AND key > ? "
            "AND hash IS NOT NULL AND seen < ? ORDER BY key LIMIT ?",
            (tbl, after or "", pass_start, limit))
        return [(k, Stored(h, img)) for k, h, img in rows]

    def apply(self, tbl: str, step: int, writes: Iterable[Write],
              seen_keys: Sequence[str]) -> None:
        """Write one step atomically: new values (old ones kept) and ``seen`` marks."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany(
                "INSERT INTO rows (tbl, key, hash, image, step, old_hash, old_image, old_step, "
                "seen) VALUES (?, ?, ?, ?, ?, NULL, NULL, NULL, ?) "
                "ON CONFLICT (tbl, key) DO UPDATE SET old_hash = hash, old_image = image, "
                "old_step = step, hash = excluded.hash, image = excluded.image, "
                "step = excluded.step",
                [(tbl, w.key, w.hash, w.image, step, step if w.hash is not None else 0)
                 for w in writes])
            c.executemany("UPDATE rows SET seen = ? WHERE tbl = ? AND key = ?",
                          [(step, tbl, k) for k in seen_keys])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def count(self, tbl: str) -> int:
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM rows WHERE tbl = ? AND hash IS NOT NULL", (tbl,)).fetchone()[0])
