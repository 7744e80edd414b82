"""Checkpoint of the postgres adapter, and the snapshot-resume filters. Pure, no I/O.

The checkpoint (a JSON dict committed with each outbox batch) says exactly what is
already in the outbox:

``lsn``
    end LSN of the last transaction whose changes are all in the outbox: streaming
    restarts there and the slot is confirmed up to there, never further.
``tx``
    ``{"lsn": commit LSN, "done": n}`` while a large transaction is emitted in several
    batches: its first ``n`` changes are in the outbox. A restart gets the whole
    transaction again from the server and skips those ``n`` (their ids, commit LSN +
    ordinal, are the same, so JetStream would drop them anyway).
``snapshot``
    progress of a snapshot: tables done, the table being copied and the last primary
    key copied (text form), generation and attempt (both part of ``r`` event ids).
``filters``
    see below.
``resnapshot``
    an on-demand re-snapshot of live tables (present once one was requested; see
    :mod:`cdc_bridge.adapters.postgres.resnap_state`). Absent in older checkpoints.

Resuming a snapshot after a crash. The exported snapshot that made the first copy
consistent with the slot died with its connection. Rows not yet copied are read from a
fresh snapshot S, which is newer than the slot's start: replaying the slot from its
start would then apply, after the ``r`` rows, changes those rows already contain. So
the resume records S's visibility (``xmax`` and in-progress ``xip`` of
``pg_current_snapshot()``) and ``until`` = ``pg_current_wal_lsn()`` taken after S, and
while streaming, a change is dropped exactly when it belongs to a range of rows read
under S and its transaction is visible in S (all such transactions commit before
``until``, so the filter retires once the stream passes it). Transactions not visible
in S are newer than the copy and are emitted. That is PostgreSQL's own visibility rule,
so the result is the same as an uninterrupted snapshot: no change lost, none applied
twice, per-key order kept. Ranges are "primary key greater than the last one copied"
when the key's type orders the same in Python as in PostgreSQL (integers, numeric,
uuid); otherwise the interrupted table is copied again from its start under S (its
already copied rows appear twice as ``r``, the later copy newer).
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.adapters.postgres.pgoutput import lsn_to_str, str_to_lsn
from cdc_bridge.adapters.postgres.resnap_state import ResnapProgress
from cdc_bridge.adapters.postgres.xids import XID_MASK, precedes
from cdc_bridge.adapters.snapshot_progress import SnapshotProgress

#: Type OIDs whose text form converts to a Python value ordered like PostgreSQL orders it.
_ORDERABLE: dict[int, Any] = {
    20: int, 21: int, 23: int, 26: int, 1700: decimal.Decimal, 2950: str.lower,
}


def orderable(type_oids: Sequence[int]) -> bool:
    return bool(type_oids) and all(t in _ORDERABLE for t in type_oids)


def sort_key(type_oids: Sequence[int], texts: Sequence[str | None]) -> tuple[Any, ...]:
    """Key values (PostgreSQL text form) as a tuple ordered like PostgreSQL orders them."""
    return tuple(_ORDERABLE[t](v) for t, v in zip(type_oids, texts, strict=True))


@dataclass(slots=True)
class SnapshotFilter:
    """Changes visible in a resumed snapshot S, for the row ranges read under S."""

    xmax: int
    xip: frozenset[int]
    until: int
    #: table -> last key copied before S (text form), ``None`` = the whole table.
    ranges: dict[str, list[str | None] | None]

    @classmethod
    def from_snapshot(cls, pg_snapshot: str, until_lsn: str) -> SnapshotFilter:
        """From ``pg_current_snapshot()::text`` (``xmin:xmax:xip,...``)."""
        _xmin, xmax, xip = pg_snapshot.split(":")
        return cls(int(xmax) & XID_MASK,
                   frozenset(int(x) & XID_MASK for x in xip.split(",") if x),
                   str_to_lsn(until_lsn), {})

    def visible(self, xid: int) -> bool:
        return precedes(xid, self.xmax) and xid not in self.xip

    def to_json(self) -> dict[str, Any]:
        return {"xmax": self.xmax, "xip": sorted(self.xip), "until": lsn_to_str(self.until),
                "ranges": dict(self.ranges)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SnapshotFilter:
        return cls(int(raw["xmax"]), frozenset(int(x) for x in raw["xip"]),
                   str_to_lsn(raw["until"]), dict(raw["ranges"]))


def governing(filters: Sequence[SnapshotFilter], table: str, key: tuple[Any, ...] | None,
              key_of: Any) -> SnapshotFilter | None:
    """The filter whose snapshot a row of ``table`` with ``key`` was copied under, if any.

    ``key_of(texts)`` turns a stored range bound into a comparable tuple. Successive
    resumes of one table have increasing bounds; the row belongs to the greatest bound
    below its key.
    """
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
        b = key_of(bound)
        if key > b and (best_bound is None or b > best_bound):
            best, best_bound = f, b
    return best


@dataclass(slots=True)
class Position:
    lsn: int = 0
    tx_lsn: int | None = None
    tx_done: int = 0
    snapshot: SnapshotProgress | None = None
    filters: list[SnapshotFilter] = field(default_factory=list)
    #: Snapshot generation counter (each new snapshot gets new ``r`` event ids).
    gen: int = 0
    #: On-demand re-snapshot of live tables (:mod:`cdc_bridge.adapters.postgres.resnap_state`).
    resnapshot: ResnapProgress | None = None
    #: Each captured table's OID as capture knows it: a table re-created while the
    #: bridge was stopped has another one at the next start (tables.py).
    oids: dict[str, int] = field(default_factory=dict)

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "lsn": lsn_to_str(self.lsn),
            "tx": None if self.tx_lsn is None else {"lsn": lsn_to_str(self.tx_lsn),
                                                    "done": self.tx_done},
            "snapshot": None if self.snapshot is None else self.snapshot.to_json(),
            "filters": [f.to_json() for f in self.filters],
            "gen": self.gen,
            **({} if self.resnapshot is None else {"resnapshot": self.resnapshot.to_json()}),
            **({"oids": dict(self.oids)} if self.oids else {}),
        }

    @classmethod
    def from_checkpoint(cls, raw: dict[str, Any] | None) -> Position | None:
        if not raw:
            return None
        tx = raw.get("tx")
        snap = raw.get("snapshot")
        return cls(
            lsn=str_to_lsn(raw["lsn"]),
            tx_lsn=None if tx is None else str_to_lsn(tx["lsn"]),
            tx_done=0 if tx is None else int(tx["done"]),
            snapshot=None if snap is None else SnapshotProgress.from_json(snap),
            filters=[SnapshotFilter.from_json(f) for f in raw.get("filters", [])],
            gen=int(raw.get("gen", 0)),
            resnapshot=_resnap(raw.get("resnapshot")),
            oids={str(k): int(v) for k, v in (raw.get("oids") or {}).items()},
        )

    def retire_filters(self, commit_lsn: int) -> None:
        """Drop filters the stream has passed: no later transaction can be visible in them."""
        if self.filters and any(commit_lsn >= f.until for f in self.filters):
            self.filters = [f for f in self.filters if commit_lsn < f.until]


def _resnap(raw: dict[str, Any] | None) -> ResnapProgress | None:
    if not raw:
        return None
    return ResnapProgress.from_json(raw)
