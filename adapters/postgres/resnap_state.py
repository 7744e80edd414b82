"""On-demand re-snapshot of live tables: progress, visibility and the chunk hold. Pure.

``cdc-bridge snapshot`` asks a *streaming* adapter to emit ``op: r`` for every row of
some tables again, while the stream keeps flowing. Each chunk (``snapshot_chunk_size``
rows in primary-key order) is read in its own short REPEATABLE READ transaction ``S``,
and ``until`` = ``pg_current_wal_lsn()`` is read in the same statement as the snapshot,
so every transaction visible in ``S`` commits below ``until``. The rows are *held*
(:class:`PendingChunk`, at most one chunk in memory) while the stream goes on, and are
released as ``r`` events at the first stream point at or past ``until`` (a commit
ending there, the next transaction's ``Begin``, a keepalive or a logical message; the
adapter writes a tiny logical message after each read so an idle stream gets there at
once). While held:

* a change of a held key whose transaction is visible in ``S`` is older than the row
  read: it is emitted as usual, and the ``r`` after it carries its effect;
* a change of a held key whose transaction is *not* visible in ``S`` but commits below
  ``until`` (it was committing, its commit record written but not yet visible, while
  ``S`` was taken: common under a steady write load, where a commit waits for its WAL
  flush) is newer than the row read: it is emitted too, the key is marked stale and
  its ``r`` is not released; stale keys are read again with the next chunk, under a
  newer snapshot (``retry``);
* a truncate of the table, or a change whose key cannot be told, invisible in ``S``
  makes the whole chunk stale: it is read again.

Before a chunk's snapshot is used, every transaction the stream already emitted (the
last :data:`RECENT_XIDS` commits) must be visible in it: a commit can reach the stream
an instant before it becomes visible to new snapshots, and a row read then would be
older than a change already emitted. Such a snapshot is dropped and taken again.

The guarantee, per key ``K`` of a re-snapshotted table: every change of ``K`` is
emitted exactly as without the re-snapshot (none dropped, none reordered), and ``K``'s
``r`` event is inserted into that sequence at a point where it is exact: it carries
``K``'s state after every change emitted before it, and every change emitted after it
came later. A consumer folding the stream therefore never regresses and ends equal to
the table. Every row that exists when its chunk is read gets one ``r`` (``snap:<gen>.
<attempt>:<table>:<key>``); rows inserted into a range already read arrive only as
``c``; rows deleted before their range is read get no ``r`` (their ``d`` is emitted).

Progress (:class:`ResnapProgress`) is part of the checkpoint, committed with the batch
that carries each chunk's ``r`` events, so a crash (``kill -9``) resumes after the last
chunk released; a held chunk is simply read again. Each request bumps ``seq``; the
record stays (``finished``) so the daemon can tell a request done.

A partial backfill (``--where``) keeps its ``where`` per table in the same record
(``wheres``), so a resumed run reads the same rows: the chunk queries add it to their
``WHERE`` (a chunk is then the next ``snapshot_chunk_size`` *matching* rows in key
order; everything above holds for the rows read, and rows outside the ``where`` get no
``r``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.adapters.postgres.xids import precedes
from cdc_bridge.adapters.snapshot_progress import finish_table, merge_tables

_XID_MASK = 0xFFFF_FFFF
#: Commits the stream remembers for the visibility check of a new chunk snapshot.
RECENT_XIDS = 4096

KeyTexts = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Visibility:
    """``pg_current_snapshot()``: which transactions a snapshot sees (32-bit xids)."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Visibility:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin) & _XID_MASK, int(xmax) & _XID_MASK,
                   frozenset(int(x) & _XID_MASK for x in xip.split(",") if x))

    def visible(self, xid: int) -> bool:
        """A committed ``xid`` is seen by the snapshot."""
        return precedes(xid, self.xmax) and xid not in self.xip

    def behind(self, committed: Sequence[int]) -> list[int]:
        """Committed xids the snapshot does not see yet (it is older than the stream)."""
        return [x for x in committed if not precedes(x, self.xmin) and not self.visible(x)]


@dataclass(slots=True)
class ResnapProgress:
    """A re-snapshot run: requested tables, where it is, how much is done."""

    seq: int
    gen: int
    attempt: int = 1
    tables: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    current: str | None = None
    #: Last key released of ``current`` (text form); ``None`` = from the start.
    after: list[str] | None = None
    #: Keys of ``current`` at or below ``after`` still to read (found stale).
    retry: list[list[str]] = field(default_factory=list)
    rows: int = 0
    total: int = 0
    finished: bool = False
    #: Partial backfills (``--where``): table -> its where (absent: every row).
    wheres: dict[str, str] = field(default_factory=dict)

    def remaining(self) -> list[str]:
        return [t for t in self.tables if t not in self.done]

    def merge(self, tables: Sequence[str], where: str | None = None) -> None:
        """Another request; a table whose ``where`` it widens is read again from its
        start (under a new ``attempt``, so its rows get new event ids)."""
        if self.current in merge_tables(self, tables, where):
            self.current, self.after, self.retry = None, None, []
            self.attempt += 1

    def table_done(self, table: str) -> None:
        self.current, self.after, self.retry = None, None, []
        finish_table(self, table)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "gen": self.gen, "attempt": self.attempt,
                "tables": self.tables, "done": self.done, "current": self.current,
                "after": self.after, "retry": self.retry, "rows": self.rows,
                "total": self.total, "finished": self.finished,
                **({"wheres": self.wheres} if self.wheres else {})}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ResnapProgress:
        return cls(int(raw["seq"]), int(raw["gen"]), int(raw.get("attempt", 1)),
                   list(raw.get("tables", [])), list(raw.get("done", [])),
                   raw.get("current"), raw.get("after"),
                   [list(k) for k in raw.get("retry", [])], int(raw.get("rows", 0)),
                   int(raw.get("total", 0)), bool(raw.get("finished", False)),
                   dict(raw.get("wheres") or {}))


@dataclass(slots=True)
class PendingChunk:
    """Rows read under one snapshot, held until the stream passes ``until``."""

    table: str
    vis: Visibility
    until: int
    #: key (text form) -> the row's column texts, in key order.
    rows: dict[KeyTexts, list[str | None]]
    #: Last key of the keyset part (``None``: that part was empty).
    last: KeyTexts | None
    #: The keyset read returned fewer rows than asked: the table ends here.
    exhausted: bool
    stale: set[KeyTexts] = field(default_factory=set)
    #: The whole chunk must be read again (truncate or unknown key, not visible in S).
    redo: bool = False

    def observe(self, xid: int, keys: Sequence[KeyTexts | None]) -> None:
        """A change of this table in transaction ``xid`` touching ``keys``."""
        if self.vis.visible(xid):
            return
        for k in keys:
            if k is None:
                self.redo = True
            elif k in self.rows:
                self.stale.add(k)

    def observe_truncate(self, xid: int) -> None:
        if not self.vis.visible(xid):
            self.redo = True

    def passed(self, lsn: int) -> bool:
        return lsn >= self.until


@dataclass(frozen=True, slots=True)
class Release:
    """What releasing a chunk emits and how progress moves."""

    rows: list[tuple[KeyTexts, list[str | None]]]
    table_finished: bool


def release(chunk: PendingChunk, progress: ResnapProgress) -> Release:
    """Apply a passed chunk to ``progress``; returns the rows to emit as ``r``."""
    if chunk.redo:
        return Release([], False)  # progress unchanged: the same range is read again
    emit = [(k, row) for k, row in chunk.rows.items() if k not in chunk.stale]
    progress.retry = [list(k) for k in chunk.stale]
    if chunk.last is not None:
        progress.after = list(chunk.last)
    progress.rows += len(emit)
    finished = chunk.exhausted and not chunk.stale
    return Release(emit, finished)
