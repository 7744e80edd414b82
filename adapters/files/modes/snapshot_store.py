"""State of ``snapshot`` mode: the previous extract and the one being compared, in SQLite.

Memory stays bounded whatever the extract size: rows live on disk in the adapter's own
SQLite file under ``state_dir/files/``, keyed by the canonical JSON of their key
columns (``WITHOUT ROWID`` tables, so the key order is the storage order). Comparing
two extracts is a sort-merge of two key-ordered scans, read in pages of ``n`` rows
(:func:`merge_page` is pure and unit-tested).

Tables: ``cur`` (the last accepted extract), ``stg`` (the new one), ``stg_bad`` (its
rows that could not be parsed, in file order) and ``meta`` (which file each holds and
whether ``stg`` is fully loaded). ``swap`` makes ``stg`` the new ``cur`` in one
transaction; it runs only after the extract's last batch of events is committed to the
outbox, and is idempotent on restart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT);
CREATE TABLE IF NOT EXISTS cur (key TEXT PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stg (key TEXT PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stg_bad (id INTEGER PRIMARY KEY, off INTEGER, line INTEGER,
                                    reason TEXT, raw BLOB);
"""

Row = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class Change:
    op: str  # "c" | "u" | "d"
    key: str
    before: bytes | None
    after: bytes | None


def same_row(a: bytes, b: bytes) -> bool:
    return a == b or bool(orjson.loads(a) == orjson.loads(b))


def merge_page(new: list[Row], old: list[Row], new_more: bool, old_more: bool
               ) -> tuple[list[Change], str | None, bool]:
    """Merge two key-ordered pages. Returns (changes, last key consumed, finished).

    A side whose page is full (``*_more``) may hold keys beyond its page, so the merge
    stops where such a page ends; the caller reads the next pages after the last key.
    """
    changes: list[Change] = []
    i = j = 0
    last: str | None = None
    while True:
        if i == len(new) and new_more:
            break
        if j == len(old) and old_more:
            break
        if i == len(new) and j == len(old):
            return changes, last, not (new_more or old_more)
        if j == len(old) or (i < len(new) and new[i][0] < old[j][0]):
            changes.append(Change("c", new[i][0], None, new[i][1]))
            last = new[i][0]
            i += 1
        elif i == len(new) or old[j][0] < new[i][0]:
            changes.append(Change("d", old[j][0], old[j][1], None))
            last = old[j][0]
            j += 1
        else:
            if not same_row(new[i][1], old[j][1]):
                changes.append(Change("u", new[i][0], old[j][1], new[i][1]))
            last = new[i][0]
            i += 1
            j += 1
    return changes, last, False


class SnapshotStore:
    """Blocking; used from one worker thread at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)

    def meta(self, k: str) -> str | None:
        row = self.conn.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def _set(self, k: str, v: str | None) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(k, v) VALUES (?, ?)", (k, v))

    def begin_load(self, ident: str) -> None:
        with self._tx():
            self.conn.execute("DELETE FROM stg")
            self.conn.execute("DELETE FROM stg_bad")
            self._set("staging", ident)
            self._set("staging_state", "loading")

    def load(self, rows: Iterable[tuple[str, bytes, int, int, bytes]],
             bad: Iterable[tuple[int, int, str, bytes]] = ()) -> list[tuple[int, int]]:
        """Insert (key, row, offset, line, raw) and bad (offset, line, reason, raw) rows.

        A duplicate key goes to ``stg_bad`` too; returns (offset, line) of the duplicates.
        """
        dupes: list[tuple[int, int]] = []
        with self._tx():
            self.bad(bad)
            for key, row, off, line, raw in rows:
                try:
                    self.conn.execute("INSERT INTO stg(key, row) VALUES (?, ?)", (key, row))
                except sqlite3.IntegrityError:
                    self.bad([(off, line, f"duplicate key {key[:200]} in the extract", raw)])
                    dupes.append((off, line))
        return dupes

    def bad(self, rows: Iterable[tuple[int, int, str, bytes]]) -> None:
        self.conn.executemany("INSERT INTO stg_bad(off, line, reason, raw) VALUES (?,?,?,?)",
                              rows)

    def finish_load(self) -> None:
        with self._tx():
            self._set("staging_state", "loaded")

    def loaded(self, ident: str) -> bool:
        return self.meta("staging") == ident and self.meta("staging_state") == "loaded"

    def has_base(self) -> bool:
        return self.meta("current") is not None

    def bad_page(self, after_id: int, n: int) -> list[tuple[int, int, int, str, bytes]]:
        return self.conn.execute(
            "SELECT id, off, line, reason, raw FROM stg_bad WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, n)).fetchall()

    def page(self, table: str, after: str | None, n: int) -> list[Row]:
        assert table in ("stg", "cur")
        if after is None:
            sql = f"SELECT key, row FROM {table} ORDER BY key LIMIT ?"
            return self.conn.execute(sql, (n,)).fetchall()
        sql = f"SELECT key, row FROM {table} WHERE key > ? ORDER BY key LIMIT ?"
        return self.conn.execute(sql, (after, n)).fetchall()

    def diff(self, after: str | None, n: int) -> tuple[list[Change], str | None, bool]:
        """Changes after key ``after``: at least ``n`` (unless finished), at most ~2n."""
        changes: list[Change] = []
        while True:
            new = self.page("stg", after, n)
            old = self.page("cur", after, n)
            got, last, finished = merge_page(new, old, len(new) == n, len(old) == n)
            changes.extend(got)
            after = last if last is not None else after
            if finished or len(changes) >= n:
                return changes, after, finished

    def swap(self, ident: str) -> bool:
        """Make the loaded extract ``ident`` the base for the next one (idempotent)."""
        if self.meta("staging") != ident:
            return False
        with self._tx():
            self.conn.execute("DROP TABLE cur")
            self.conn.execute("ALTER TABLE stg RENAME TO cur")
            self.conn.execute(
                "CREATE TABLE stg (key TEXT PRIMARY KEY, row BLOB NOT NULL) WITHOUT ROWID")
            self.conn.execute("DELETE FROM stg_bad")
            self._set("current", ident)
            self._set("staging", None)
            self._set("staging_state", None)
        return True

    def _tx(self) -> _Tx:
        return _Tx(self.conn)

    def close(self) -> None:
        self.conn.close()


class _Tx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
