"""A filter tree compiled once into nested closures, for filters run in the bridge.

The closures follow SQL's three-valued logic, so a filter evaluated here agrees with the
same filter pushed down as a ``WHERE`` clause: a comparison with ``null`` (or a missing
column, read as ``null``) is *unknown* (``None``); ``and``/``or``/``not`` propagate
unknown as SQL does; a row matches only when the whole filter is ``True``.

Values are compared by kind: numbers with numbers (``int``, ``float``, ``Decimal``),
text with text, booleans with booleans, dates and times with dates and times. Across
kinds: text holding a number compares as that number (an untyped CSV field against
``qty > 3``), a date or time compares with text by its ISO 8601 form, a boolean with
``0``/``1``. Anything else is unknown, never an error. The usual case, a column against
a constant of the column's own kind, takes one dictionary lookup, one class check and
one comparison.
"""

from __future__ import annotations

import datetime as dt
import operator
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from cdc_bridge.adapters.filters.nodes import (
    OPERATORS,
    And,
    Column,
    Compare,
    Expr,
    InList,
    IsNull,
    Literal,
    Not,
    Operand,
    OpRef,
)

#: ``test(row, op)`` -> ``True``, ``False`` or ``None`` (unknown).
Test = Callable[[Mapping[str, Any], str], "bool | None"]
_Get = Callable[[Mapping[str, Any], str], Any]

_NUM, _STR, _BOOL, _TIME = "num", "str", "bool", "time"
_NUMBERS = frozenset({int, float, Decimal})
_KIND_OF: dict[type, str] = {int: _NUM, float: _NUM, Decimal: _NUM, str: _STR, bool: _BOOL,
                             dt.date: _TIME, dt.datetime: _TIME, dt.time: _TIME}


def _kind(value: Any) -> str | None:
    kind = _KIND_OF.get(value.__class__)
    if kind is None:  # subclasses (IntEnum, a tz-aware datetime subclass...)
        for cls, k in _KIND_OF.items():
            if isinstance(value, cls) and not (cls is int and isinstance(value, bool)):
                return k
    return kind


def _number(text: str) -> Decimal | None:
    try:
        return Decimal(text.strip())
    except (InvalidOperation, ValueError):
        return None


def comparable(a: Any, b: Any) -> tuple[Any, Any] | None:
    """``a`` and ``b`` in forms Python compares as SQL would, or ``None`` (unknown)."""
    ka, kb = _kind(a), _kind(b)
    if ka is None or kb is None:
        return None
    if ka == kb:
        if ka == _TIME and type(a) is not type(b):
            return a.isoformat(), b.isoformat()
        return a, b
    pair = {ka, kb}
    if pair == {_NUM, _STR}:
        na = _number(a) if ka == _STR else a
        nb = _number(b) if kb == _STR else b
        return None if na is None or nb is None else (na, nb)
    if pair == {_TIME, _STR}:
        return (a.isoformat() if ka == _TIME else a), (b.isoformat() if kb == _TIME else b)
    if pair == {_BOOL, _NUM}:
        return (int(a) if ka == _BOOL else a), (int(b) if kb == _BOOL else b)
    return None


def _compare(fn: Callable[[Any, Any], bool], a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    pair = comparable(a, b)
    if pair is None:
        return None
    try:
        return fn(*pair)
    except (TypeError, ArithmeticError):  # NaN decimals, naive against aware times
        return None


def _getter(operand: Operand) -> _Get:
    if isinstance(operand, Column):
        name = operand.name
        return lambda row, op: row.get(name)
    if isinstance(operand, OpRef):
        return lambda row, op: op
    value = operand.value
    return lambda row, op: value


def _fast_types(value: Any) -> frozenset[type]:
    kind = _kind(value)
    if kind == _NUM:
        return _NUMBERS
    return frozenset({value.__class__})


def _column_vs_constant(name: str, fn: Callable[[Any, Any], bool], const: Any) -> Test:
    fast = _fast_types(const)

    def test(row: Mapping[str, Any], op: str) -> bool | None:
        v = row.get(name)
        if v.__class__ in fast:
            try:
                return fn(v, const)
            except ArithmeticError:
                return None
        return _compare(fn, v, const)
    return test


_FLIP = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _compile_compare(node: Compare) -> Test:
    left, right, cmp = node.left, node.right, node.cmp
    if isinstance(left, Literal) and not isinstance(right, Literal):
        left, right, cmp = right, left, _FLIP[cmp]  # type: ignore[assignment]
    fn = OPERATORS[cmp]
    if isinstance(left, Column) and isinstance(right, Literal):
        return _column_vs_constant(left.name, fn, right.value)
    get_l, get_r = _getter(left), _getter(right)
    return lambda row, op: _compare(fn, get_l(row, op), get_r(row, op))


def _compile_in(node: InList) -> Test:
    get = _getter(node.operand)
    values = node.values
    kinds = {_kind(v) for v in values}
    same = frozenset(values) if len(kinds) == 1 else None
    fast = _fast_types(values[0]) if same is not None else frozenset()
    negated = node.negated

    def test(row: Mapping[str, Any], op: str) -> bool | None:
        v = get(row, op)
        if v is None:
            return None
        if same is not None and v.__class__ in fast:
            return (v in same) != negated
        found = any(_compare(operator.eq, v, x) for x in values)
        return found != negated
    return test


def _all(tests: list[Test]) -> Test:
    def test(row: Mapping[str, Any], op: str) -> bool | None:
        unknown = False
        for t in tests:
            r = t(row, op)
            if r is False:
                return False
            if r is None:
                unknown = True
        return None if unknown else True
    return test


def _any(tests: list[Test]) -> Test:
    def test(row: Mapping[str, Any], op: str) -> bool | None:
        unknown = False
        for t in tests:
            r = t(row, op)
            if r is True:
                return True
            if r is None:
                unknown = True
        return None if unknown else False
    return test


def compile_test(expr: Expr) -> Test:
    """``expr`` as one closure ``test(row, op)`` (three-valued)."""
    if isinstance(expr, Compare):
        return _compile_compare(expr)
    if isinstance(expr, InList):
        return _compile_in(expr)
    if isinstance(expr, IsNull):
        get, negated = _getter(expr.operand), expr.negated
        return lambda row, op: (get(row, op) is None) != negated
    if isinstance(expr, Not):
        inner = compile_test(expr.item)

        def negate(row: Mapping[str, Any], op: str) -> bool | None:
            r = inner(row, op)
            return None if r is None else not r
        return negate
    tests = [compile_test(item) for item in expr.items]
    return _all(tests) if isinstance(expr, And) else _any(tests)
