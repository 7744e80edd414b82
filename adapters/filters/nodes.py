"""The typed syntax tree of a row filter (pure data, no behaviour).

A filter is a boolean :data:`Expr` over :data:`Operand` values: a table column
(:class:`Column`), the change's operation (:class:`OpRef`, written ``op``) or a constant
(:class:`Literal`). :func:`cdc_bridge.adapters.filters.parse.parse` builds it;
:mod:`~cdc_bridge.adapters.filters.evaluate` and :mod:`~cdc_bridge.adapters.filters.sql`
read it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from typing import Literal as Lit

#: A constant's value: text, an exact number, or a boolean (``null`` only appears in
#: ``is null`` / ``is not null``).
Value = str | int | Decimal | bool
Comparison = Lit["=", "!=", "<", "<=", ">", ">="]
#: Each comparison as a two-argument function (Python values, or SQLAlchemy expressions).
OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str


@dataclass(frozen=True, slots=True)
class OpRef:
    """The pseudo-column ``op``: ``c``, ``u``, ``d`` or ``r`` of the change."""


@dataclass(frozen=True, slots=True)
class Literal:
    value: Value


Operand = Column | OpRef | Literal


@dataclass(frozen=True, slots=True)
class Compare:
    left: Operand
    cmp: Comparison
    right: Operand


@dataclass(frozen=True, slots=True)
class InList:
    operand: Operand
    values: tuple[Value, ...]
    negated: bool = False


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Operand
    negated: bool = False


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Expr


Expr = Compare | InList | IsNull | And | Or | Not


def operands(expr: Expr) -> list[Operand]:
    """Every operand of ``expr``, in order of appearance."""
    if isinstance(expr, Compare):
        return [expr.left, expr.right]
    if isinstance(expr, InList | IsNull):
        return [expr.operand]
    if isinstance(expr, Not):
        return operands(expr.item)
    return [o for item in expr.items for o in operands(item)]


def column_names(expr: Expr) -> frozenset[str]:
    """The table columns ``expr`` reads."""
    return frozenset(o.name for o in operands(expr) if isinstance(o, Column))


def uses_op(expr: Expr) -> bool:
    """Whether ``expr`` reads the pseudo-column ``op``."""
    return any(isinstance(o, OpRef) for o in operands(expr))
