"""Partial backfills: the ``where`` of a re-snapshot (``cdc-bridge snapshot ... --where``). Pure.

A re-snapshot may be limited to the rows matching an expression of the row-filter
language (:mod:`cdc_bridge.adapters.filters`, docs/filters.md). Such a ``where`` is
checked where the request is made (the CLI, ``POST /snapshot``) and again by the source,
which also checks the columns against the table. It is combined (AND) with the table's
own ``filter``: a backfill never sends a row the filter keeps out.

A ``where`` cannot read ``op`` (every row a backfill reads is an ``op: r``).

Runs keep one ``where`` per table (``None``: every row). A request for a table whose
run is not finished yet either is covered by it (the same ``where``, or the run reads
every row) or widens it (:func:`widen`: the two ``where``s joined by ``or``, every row
if either asks for every row); a widened table is read again from its start, since
the part already read skipped rows the wider ``where`` wants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cdc_bridge.adapters.contract import SnapshotRequestError
from cdc_bridge.adapters.filters import FilterSyntaxError, RowFilter, row_filter
from cdc_bridge.adapters.filters.parse import op_position

__all__ = ["FilterSyntaxError", "check_where", "covers", "refuse_unusable", "table_problem",
           "widen"]


def check_where(text: str) -> RowFilter:
    """``text`` parsed; raises :class:`FilterSyntaxError` (with the caret) when it does
    not parse or reads ``op``."""
    rf = row_filter(text)
    if rf.uses_op:
        line, column = op_position(text) or (1, 1)
        raise FilterSyntaxError(text, line, column, "a --where cannot read op (every row a "
                                "backfill reads is op r)")
    return rf


def table_problem(where: RowFilter, table: str, columns: Iterable[str]) -> str | None:
    """Why ``where`` cannot select rows of ``table`` (``None``: it can)."""
    unknown = where.unknown_columns(set(columns))
    if unknown:
        return (f"table {table} has no column {', '.join(map(repr, unknown))} "
                f"(--where {where.text})")
    return None


def refuse_unusable(adapter: str, where: str,
                    columns: Mapping[str, Iterable[str]]) -> RowFilter:
    """``where`` parsed, for a source's request check: :class:`SnapshotRequestError` if it
    does not parse, reads ``op`` or names a column one of the tables (``columns``: table
    -> its column names) lacks."""
    try:
        rf = check_where(where)
    except ValueError as e:
        raise SnapshotRequestError(f"--where: {e}") from None
    problems = [p for table, cols in columns.items() if (p := table_problem(rf, table, cols))]
    if problems:
        raise SnapshotRequestError(f"adapter {adapter}: " + "; ".join(problems))
    return rf


def covers(running: str | None, new: str | None) -> bool:
    """A run reading ``running`` already reads every row ``new`` asks for."""
    return running is None or running == new


def widen(running: str | None, new: str | None) -> str | None:
    """The ``where`` reading the rows of both (``None``: every row)."""
    if running is None or new is None:
        return None
    if running == new:
        return running
    return f"({running}) or ({new})"
