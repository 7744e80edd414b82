"""A table's row filter: parsed once, and the rule for changes that cross it.

The crossing rule is PostgreSQL's (what a publication row filter does), applied the
same way by every source that evaluates filters in the bridge:

========================  ===================  ===================================
change                    old row / new row    published as
========================  ===================  ===================================
insert, snapshot read     - / matches          unchanged (``c`` / ``r``)
insert, snapshot read     - / does not         nothing
update                    matches / matches    ``u``
update                    does not / matches   ``c`` with the new row (no before)
update                    matches / does not   ``d`` with the old row as before
update                    does not / does not  nothing
delete                    matches / -          ``d``
delete                    does not / -         nothing
========================  ===================  ===================================

An old row that lacks a column the filter reads (a source that sends only the key as
the before image) cannot be judged: it is taken as matching, so an update leaving the
filter still yields a ``d`` (a consumer deleting a row it never had does nothing) and
a delete is always passed on. ``op`` in a filter is the source's operation: both rows of
an update are judged with ``op = 'u'``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cdc_bridge.adapters.filters.evaluate import Test, compile_test
from cdc_bridge.adapters.filters.nodes import Expr, column_names, uses_op
from cdc_bridge.adapters.filters.parse import parse

Row = Mapping[str, Any]
#: ``(op, before, after)`` of the change to publish.
Routed = tuple[str, Row | None, Row | None]


@dataclass(frozen=True, slots=True)
class RowFilter:
    text: str
    expr: Expr
    #: Table columns the filter reads.
    columns: frozenset[str]
    #: It reads ``op``: it cannot be pushed down into SQL.
    uses_op: bool
    _test: Test = field(repr=False, compare=False)

    def matches(self, row: Row, op: str) -> bool:
        return self._test(row, op) is True

    def covers(self, row: Row) -> bool:
        """Whether ``row`` holds every column the filter reads."""
        return self.columns <= row.keys()

    def unknown_columns(self, known: set[str] | frozenset[str]) -> list[str]:
        return sorted(self.columns - set(known))

    def route(self, op: str, before: Row | None, after: Row | None) -> Routed | None:
        """The change to publish for ``op`` (module table), or ``None`` to drop it."""
        test = self._test
        if op in ("c", "r"):
            return (op, before, after) if after is not None and test(after, op) is True \
                else None
        if op == "d":
            if before is None or not self.columns <= before.keys():
                return op, before, after
            return (op, before, after) if test(before, op) is True else None
        if op != "u":
            return op, before, after
        new_in = after is not None and test(after, op) is True
        old = before if before is not None else {}
        old_in = not self.columns <= old.keys() or test(old, op) is True
        if new_in:
            return ("u", before, after) if old_in else ("c", None, after)
        return ("d", before, None) if old_in else None


@lru_cache(maxsize=256)
def row_filter(text: str) -> RowFilter:
    """``text`` parsed and compiled (cached: configs name the same filter text again).

    Raises :class:`~cdc_bridge.adapters.filters.parse.FilterSyntaxError`.
    """
    expr = parse(text)
    return RowFilter(text, expr, column_names(expr), uses_op(expr), compile_test(expr))
