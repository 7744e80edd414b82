"""A filter tree as SQL, for sources that filter in their own queries (pushdown).

:func:`to_sqlalchemy` gives a SQLAlchemy Core condition (``sql_poll`` adds it to its
poll and snapshot queries, with bound parameters for the constants);
:func:`to_postgres_sql` gives the text of a PostgreSQL condition, for a publication's
``WHERE (...)`` (which takes no parameters) and the snapshot of a filtered table;
:func:`to_mysql_sql` a MySQL/MariaDB condition with ``%s`` parameters (the chunk
queries of a ``mysql_binlog`` partial backfill).
A filter that reads ``op`` has no SQL form (the operation is not a column): both raise
:class:`ValueError`; callers evaluate such filters in the bridge instead.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

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
    Value,
)

_NO_OP = "a filter that reads op has no SQL form (op is not a column)"


def to_sqlalchemy(expr: Expr, column: Callable[[str], sa.ColumnElement[Any]]
                  ) -> sa.ColumnElement[bool]:
    """``expr`` as a condition; ``column(name)`` gives the query's column of that name."""
    def operand(o: Operand) -> sa.ColumnElement[Any]:
        if isinstance(o, Column):
            return column(o.name)
        if isinstance(o, Literal):
            return sa.literal(o.value)
        raise ValueError(_NO_OP)

    def build(e: Expr) -> sa.ColumnElement[bool]:
        if isinstance(e, Compare):
            return OPERATORS[e.cmp](operand(e.left), operand(e.right))  # type: ignore[no-any-return]
        if isinstance(e, InList):
            target = operand(e.operand)
            return target.not_in(e.values) if e.negated else target.in_(e.values)
        if isinstance(e, IsNull):
            target = operand(e.operand)
            return target.is_not(None) if e.negated else target.is_(None)
        if isinstance(e, Not):
            return sa.not_(build(e.item))
        parts = [build(item) for item in e.items]
        return sa.and_(*parts) if isinstance(e, And) else sa.or_(*parts)

    return build(expr)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pg_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        text = str(value)
        return f"({text})" if text.startswith("-") else text
    # E'' escapes are read the same whatever standard_conforming_strings says.
    body = value.replace("\\", "\\\\").replace("'", "''")
    return f"E'{body}'"


def _render(expr: Expr, operand: Callable[[Operand], str],
            values: Callable[[tuple[Value, ...]], str]) -> str:
    """``expr`` as SQL text; ``operand`` and ``values`` (an ``IN`` list) say how a dialect
    writes columns and constants."""
    def build(e: Expr) -> str:
        if isinstance(e, Compare):
            left = operand(e.left)
            return f"{left} {'<>' if e.cmp == '!=' else e.cmp} {operand(e.right)}"
        if isinstance(e, InList):
            target = operand(e.operand)
            return f"{target} {'NOT IN' if e.negated else 'IN'} ({values(e.values)})"
        if isinstance(e, IsNull):
            return f"{operand(e.operand)} IS {'NOT NULL' if e.negated else 'NULL'}"
        if isinstance(e, Not):
            return f"NOT ({build(e.item)})"
        joiner = " AND " if isinstance(e, And) else " OR "
        return joiner.join(f"({build(item)})" for item in e.items)

    return build(expr)


def to_postgres_sql(expr: Expr) -> str:
    """``expr`` as PostgreSQL text, identifiers quoted, constants inlined and escaped."""
    def operand(o: Operand) -> str:
        if isinstance(o, Column):
            return quote_ident(o.name)
        if isinstance(o, Literal):
            return _pg_value(o.value)
        raise ValueError(_NO_OP)

    return _render(expr, operand, lambda vs: ", ".join(_pg_value(v) for v in vs))


def quote_mysql_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def to_mysql_sql(expr: Expr) -> tuple[str, list[Value]]:
    """``expr`` as MySQL/MariaDB text with ``%s`` placeholders, and their values."""
    params: list[Value] = []

    def operand(o: Operand) -> str:
        if isinstance(o, Column):
            return quote_mysql_ident(o.name)
        if isinstance(o, Literal):
            params.append(o.value)
            return "%s"
        raise ValueError(_NO_OP)

    def values(vs: tuple[Value, ...]) -> str:
        params.extend(vs)
        return ", ".join(["%s"] * len(vs))

    return _render(expr, operand, values), params
