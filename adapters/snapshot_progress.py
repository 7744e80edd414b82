"""The initial snapshot's progress, as every log-reading source checkpoints it.

Tables copied in key order, chunk by chunk; ``after`` is the last key copied of the
table being copied; ``attempt`` grows each time a killed copy resumes under a fresh
snapshot; ``origin`` is where the source's log stood when the snapshot began (a slot's
LSN, a binlog ``file:pos``). All of ``gen``, ``attempt`` and ``origin`` are in the
``r`` event ids (:meth:`SnapshotProgress.id_prefix`), so a copy read again after a
resume, or a later snapshot on a new slot or checkpoint, never repeats an earlier one's
ids (the duplicate window would drop its rows). Checkpoints from before ``origin``
existed have none and keep their ids. The re-snapshot runs of the sources share their
table bookkeeping (:func:`merge_tables`, :func:`finish_table`), partial ones their
``where`` per table. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdc_bridge.adapters.snapshot_where import covers, widen


@dataclass(slots=True)
class SnapshotProgress:
    gen: int
    attempt: int
    tables: list[str]
    done: list[str] = field(default_factory=list)
    current: str | None = None
    #: Last primary key copied of ``current`` (the source's own form); ``None``: none yet.
    after: list[Any] | None = None
    rows: int = 0
    #: Where the source's log stood when the snapshot began ("": older checkpoints).
    origin: str = ""

    def remaining(self) -> list[str]:
        return [t for t in self.tables if t not in self.done]

    def id_prefix(self) -> str:
        """``snap:<gen>.<attempt>[@<origin>]``: the start of every ``r`` event's id."""
        origin = f"@{self.origin}" if self.origin else ""
        return f"snap:{self.gen}.{self.attempt}{origin}"

    def to_json(self) -> dict[str, Any]:
        return {"gen": self.gen, "attempt": self.attempt, "tables": self.tables,
                "done": self.done, "current": self.current, "after": self.after,
                "rows": self.rows, **({"origin": self.origin} if self.origin else {})}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SnapshotProgress:
        return cls(int(raw["gen"]), int(raw["attempt"]), list(raw["tables"]),
                   list(raw["done"]), raw.get("current"), raw.get("after"),
                   int(raw.get("rows", 0)), str(raw.get("origin", "")))


class TableRun(Protocol):
    """A re-snapshot run's table bookkeeping (each source's ``ResnapProgress``)."""

    tables: list[str]
    done: list[str]
    finished: bool
    #: Partial backfills: table -> its ``where`` (absent: every row); see
    #: :mod:`cdc_bridge.adapters.snapshot_where`.
    wheres: dict[str, str]


def merge_tables(run: TableRun, tables: Sequence[str], where: str | None = None) -> list[str]:
    """Another request while ``run`` runs: add its tables (again if already done), each
    reading the rows matching ``where`` (``None``: all). Returns the tables still to
    finish whose ``where`` this widened: the source reads them again from their start."""
    restart: list[str] = []
    for t in tables:
        if t in run.tables and t not in run.done:
            old = run.wheres.get(t)
            if not covers(old, where):
                _set_where(run, t, widen(old, where))
                restart.append(t)
            continue
        if t in run.done:
            run.done.remove(t)
        if t not in run.tables:
            run.tables.append(t)
        _set_where(run, t, where)
    run.finished = False
    return restart


def _set_where(run: TableRun, table: str, where: str | None) -> None:
    if where is None:
        run.wheres.pop(table, None)
    else:
        run.wheres[table] = where


def finish_table(run: TableRun, table: str) -> None:
    """``table`` is copied; the run is finished when no table is left."""
    if table not in run.done:
        run.done.append(table)
    run.wheres.pop(table, None)
    if all(t in run.done for t in run.tables):
        run.finished = True
        run.tables, run.done, run.wheres = [], [], {}
