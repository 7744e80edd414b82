"""Checkpoint of the ``mysql_binlog`` source and the snapshot-resume filter. Pure, no I/O.

A binlog position is a file and an offset (``binlog.000042:1234``); files of one server
share a base name and a growing numeric suffix, so ``(file, offset)`` orders positions.

The checkpoint (a JSON dict committed with each outbox batch) says what is already in
the outbox:

``file``, ``pos``
    where the next transaction starts: every transaction before it is in the outbox.
    Streaming restarts exactly there.
``gtid``
    the GTID of the last transaction whose changes are all in the outbox (MariaDB
    ``domain-server-seq``), for information and for moving to another server by hand.
``tx``
    ``{"file", "pos", "done": n}`` while a large transaction is emitted in several
    batches: its first ``n`` changes are in the outbox. A restart reads the whole
    transaction again from its start and skips those ``n`` (their ids, start position +
    ordinal, are the same, so JetStream would drop them anyway).
``snapshot``
    progress of a snapshot: tables done, the table being copied and the last primary
    key copied, generation, attempt and ``origin`` (the binlog position where the
    snapshot is consistent), all three part of ``r`` event ids.
``resnapshot``
    progress of an on-demand re-snapshot (:class:`ResnapProgress`, see
    :mod:`.resnapshot`).
``filters``
    see below. ``gen`` counts snapshots (each has new ``r`` event ids).

Resuming a snapshot after a crash. The first copy reads in one transaction opened
``WITH CONSISTENT SNAPSHOT`` at binlog position ``B0``, where streaming starts: no
change missed, none doubled. That transaction dies with the process. The rows not yet
copied are read under a new consistent snapshot taken at ``B1 > B0``; the stream still
starts at ``B0``, so a transaction committed between ``B0`` and ``B1`` is already in the
rows read under the new snapshot. A :class:`SnapshotFilter` records ``B1`` and the key
ranges read under it (``key > last copied``, or the whole table), and the stream drops a
change exactly when its transaction starts before ``B1`` and its row lies in such a
range. The binlog is in commit order and the snapshot position is exact, so this is the
server's own visibility rule: the result is that of an uninterrupted snapshot. Ranges
need keys that order alike in Python and in the server, so they are used for integer
primary keys only; otherwise the interrupted table is copied again from its start (its
copied rows then appear twice as ``r``, the later copy newer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.adapters.snapshot_progress import (
    SnapshotProgress,
    finish_table,
    merge_tables,
)


@dataclass(frozen=True, slots=True, order=True)
class BinlogPos:
    """A position in the binary log; ordered across files of one server."""

    file: str
    pos: int

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"

    @classmethod
    def parse(cls, text: str) -> BinlogPos:
        file, _, pos = text.rpartition(":")
        if not file or not pos.isdigit():
            raise ValueError(f"not a binlog position (file:offset): {text!r}")
        return cls(file, int(pos))

    def sort_key(self) -> tuple[str, int, int]:
        """Order by base name, numeric suffix, offset (suffixes may grow past 6 digits)."""
        base, _, suffix = self.file.rpartition(".")
        return (base, int(suffix) if suffix.isdigit() else 0, self.pos)

    def before(self, other: BinlogPos) -> bool:
        return self.sort_key() < other.sort_key()


KeyBound = list[Any] | None


def key_tuple(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(values)


@dataclass(slots=True)
class SnapshotFilter:
    """Stream changes already contained in rows read under a snapshot taken at ``at``."""

    at: BinlogPos
    #: ``database.table`` -> last key copied before that snapshot (``None``: whole table).
    ranges: dict[str, KeyBound] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"at": str(self.at), "ranges": dict(self.ranges)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SnapshotFilter:
        return cls(BinlogPos.parse(raw["at"]), dict(raw["ranges"]))


def governing(filters: Sequence[SnapshotFilter], table: str,
              key: tuple[Any, ...] | None) -> SnapshotFilter | None:
    """The filter whose snapshot the row of ``table`` with ``key`` was copied under.

    Successive resumes of one table have growing bounds: the row belongs to the greatest
    bound below its key; a whole-table range applies when no bound does."""
    best: SnapshotFilter | None = None
    best_bound: tuple[Any, ...] | None = None
    for f in filters:
        if table not in f.ranges:
            continue
        bound = f.ranges[table]
        if bound is None:
            if best is None:
                best = f
            continue
        if key is None:
            continue
        b = key_tuple(bound)
        try:
            above = key > b
        except TypeError:
            continue
        if above and (best_bound is None or b > best_bound):
            best, best_bound = f, b
    return best


def already_copied(filters: Sequence[SnapshotFilter], table: str, key: tuple[Any, ...] | None,
                   tx_start: BinlogPos) -> bool:
    """A change (its transaction starting at ``tx_start``) is contained in a resumed copy."""
    if not filters:
        return False
    f = governing(filters, table, key)
    return f is not None and tx_start.before(f.at)


@dataclass(slots=True)
class ResnapProgress:
    """An on-demand re-snapshot run: requested tables, where it is, how much is done.

    ``seq`` counts requests (a request while one runs merges into it and bumps it);
    ``gen``/``attempt``/``origin`` make the ``r`` event ids (``origin``: the stream's
    binlog position when the run was requested; ``attempt`` grows on each resume)."""

    seq: int
    gen: int
    origin: str
    attempt: int = 1
    tables: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    current: str | None = None
    #: Last key released of ``current`` (as ``SELECT`` returned it); ``None``: none yet.
    after: KeyBound = None
    rows: int = 0
    total: int = 0
    finished: bool = False
    #: Partial backfills (``--where``): table -> its where (absent: every row).
    wheres: dict[str, str] = field(default_factory=dict)

    def remaining(self) -> list[str]:
        return [t for t in self.tables if t not in self.done]

    def id_prefix(self) -> str:
        return f"snap:{self.gen}.{self.attempt}@{self.origin}"

    def merge(self, tables: Sequence[str], where: str | None = None) -> None:
        """Another request; a table whose ``where`` it widens is read again from its
        start (under a new ``attempt``, so its rows get new event ids)."""
        if self.current in merge_tables(self, tables, where):
            self.current, self.after = None, None
            self.attempt += 1

    def table_done(self, table: str) -> None:
        self.current, self.after = None, None
        finish_table(self, table)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "gen": self.gen, "origin": self.origin,
                "attempt": self.attempt, "tables": self.tables, "done": self.done,
                "current": self.current, "after": self.after, "rows": self.rows,
                "total": self.total, "finished": self.finished,
                **({"wheres": self.wheres} if self.wheres else {})}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ResnapProgress:
        return cls(int(raw["seq"]), int(raw["gen"]), str(raw.get("origin", "")),
                   int(raw.get("attempt", 1)), list(raw.get("tables", [])),
                   list(raw.get("done", [])), raw.get("current"), raw.get("after"),
                   int(raw.get("rows", 0)), int(raw.get("total", 0)),
                   bool(raw.get("finished", False)), dict(raw.get("wheres") or {}))


@dataclass(slots=True)
class Position:
    """Where capture is; :meth:`to_checkpoint` is what the outbox stores."""

    at: BinlogPos
    gtid: str | None = None
    tx_start: BinlogPos | None = None
    tx_done: int = 0
    snapshot: SnapshotProgress | None = None
    filters: list[SnapshotFilter] = field(default_factory=list)
    gen: int = 0
    resnapshot: ResnapProgress | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        tx = None if self.tx_start is None else {
            "file": self.tx_start.file, "pos": self.tx_start.pos, "done": self.tx_done}
        out = {"file": self.at.file, "pos": self.at.pos, "gtid": self.gtid, "tx": tx,
               "snapshot": None if self.snapshot is None else self.snapshot.to_json(),
               "filters": [f.to_json() for f in self.filters], "gen": self.gen}
        if self.resnapshot is not None:
            out["resnapshot"] = self.resnapshot.to_json()
        return out

    @classmethod
    def from_checkpoint(cls, raw: Mapping[str, Any] | None) -> Position | None:
        if not raw:
            return None
        tx = raw.get("tx")
        snap = raw.get("snapshot")
        return cls(
            at=BinlogPos(str(raw["file"]), int(raw["pos"])),
            gtid=raw.get("gtid"),
            tx_start=None if tx is None else BinlogPos(str(tx["file"]), int(tx["pos"])),
            tx_done=0 if tx is None else int(tx["done"]),
            snapshot=None if snap is None else SnapshotProgress.from_json(snap),
            filters=[SnapshotFilter.from_json(f) for f in raw.get("filters", [])],
            gen=int(raw.get("gen", 0)),
            resnapshot=None if not raw.get("resnapshot") else ResnapProgress.from_json(
                raw["resnapshot"]),
        )

    def resume_at(self) -> BinlogPos:
        """Where streaming restarts: the unfinished transaction's start, if any."""
        return self.tx_start if self.tx_start is not None else self.at

    def retire_filters(self, tx_start: BinlogPos) -> None:
        """Drop the filters the stream has passed: no later transaction is in them."""
        if self.filters:
            self.filters = [f for f in self.filters if tx_start.before(f.at)]
