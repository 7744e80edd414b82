"""The row filter language: parsing, errors with their position, evaluation against
SQLite's own WHERE, the SQL renderings, the crossing rule, and config-load validation."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from cdc_bridge.adapters.filters import FilterSyntaxError, row_filter
from cdc_bridge.adapters.filters.nodes import (
    And,
    Column,
    Compare,
    InList,
    IsNull,
    Literal,
    Not,
    OpRef,
    Or,
)
from cdc_bridge.adapters.filters.parse import parse
from cdc_bridge.adapters.filters.sql import to_postgres_sql, to_sqlalchemy
from cdc_bridge.config import parse_config
from cdc_bridge.kernel.errors import ConfigError
from tests.fast import examples


def test_parse_builds_the_typed_tree() -> None:
    assert parse("a > 5 and (b in ('x', 'y') or not c is null)") == And((
        Compare(Column("a"), ">", Literal(5)),
        Or((InList(Column("b"), ("x", "y")), Not(IsNull(Column("c")))))))
    assert parse("op not in ('d') AND \"odd name\" <> 1.5") == And((
        InList(OpRef(), ("d",), negated=True),
        Compare(Column("odd name"), "!=", Literal(Decimal("1.5")))))
    assert parse("\"op\" is not null") == IsNull(Column("op"), negated=True)
    assert parse("name = 'O''Brien' or flag = TRUE or n >= -2") == Or((
        Compare(Column("name"), "=", Literal("O'Brien")),
        Compare(Column("flag"), "=", Literal(True)),
        Compare(Column("n"), ">=", Literal(-2))))
    # keywords only as whole words
    assert parse("android = 1 and order_no < 3") == And((
        Compare(Column("android"), "=", Literal(1)), Compare(Column("order_no"), "<", Literal(3))))


@pytest.mark.parametrize(("text", "column", "words"), [
    ("amount > > 5", 10, "unexpected '>'"),
    ("amount = null", 10, "'= null' is never true: write 'is null'"),
    ("(amount = 1", 12, "ends too early"),
    ("status in ('a', null)", 17, "null in a list never matches"),
    ("amount", 7, "ends too early"),
    ("name = 'abc", 8, "unclosed quote"),
    ("a = 1 b = 2", 7, "unexpected 'b'"),
    ("a ! 3", 3, "unexpected character '!'"),
    ("", 1, "empty filter"),
])
def test_bad_expressions_name_their_position(text: str, column: int, words: str) -> None:
    with pytest.raises(FilterSyntaxError) as info:
        parse(text)
    assert info.value.column == column
    assert words in str(info.value)
    caret = str(info.value).splitlines()[-1]
    assert caret.index("^") - 4 == column - 1  # the caret sits under the spot


def test_config_load_rejects_a_bad_filter_with_its_path_and_position() -> None:
    text = """
adapters:
  - name: erp
    type: sql_poll
    url: sqlite:///x.db
    tables:
      - {name: orders, filter: "amount >> 5"}
  - name: files
    type: files
    path: /data
    pattern: "*.csv"
    csv: {header: false, columns: [id, qty]}
    filter: "qty > 1 and colour = 'red'"
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml", {})
    joined = "\n".join(info.value.errors)
    assert "adapters[0].tables[0].filter: unexpected '>'" in joined
    assert "at column 9\n    amount >> 5\n            ^" in joined
    assert "adapters[1]: Value error" not in joined
    assert "filter reads 'colour', which the records do not have" in joined


ROWS: list[dict[str, Any]] = [
    {"a": 1, "b": "x", "c": None}, {"a": 5, "b": "y", "c": 2}, {"a": None, "b": None, "c": 7},
    {"a": -3, "b": "x", "c": 0}, {"a": 10, "b": "zz", "c": None},
]

_cols = st.sampled_from(["a", "c"])
_nums = st.integers(min_value=-4, max_value=11)
_cmp = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
_leaf = st.one_of(
    st.builds(lambda c, o, n: f"{c} {o} {n}", _cols, _cmp, _nums),
    st.builds(lambda o, s: f"b {o} '{s}'", _cmp, st.sampled_from(["x", "y", "zz", ""])),
    st.builds(lambda c, neg: f"{c} is {'not ' if neg else ''}null", _cols, st.booleans()),
    st.builds(lambda c, neg, ns: f"{c} {'not ' if neg else ''}in ({', '.join(map(str, ns))})",
              _cols, st.booleans(), st.lists(_nums, min_size=1, max_size=3)),
)
_expr = st.recursive(_leaf, lambda inner: st.one_of(
    st.builds(lambda x, y: f"({x}) and ({y})", inner, inner),
    st.builds(lambda x, y: f"({x}) or ({y})", inner, inner),
    st.builds(lambda x: f"not ({x})", inner)), max_leaves=6)


@settings(max_examples=examples(400), deadline=None)
@given(_expr)
def test_evaluation_agrees_with_sql_where(text: str) -> None:
    """The bridge's evaluation and the pushed-down WHERE keep the same rows (SQLite)."""
    f = row_filter(text)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (i INTEGER, a INTEGER, b TEXT, c INTEGER)")
    db.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                   [(i, r["a"], r["b"], r["c"]) for i, r in enumerate(ROWS)])
    table = sa.table("t", sa.column("i"), sa.column("a"), sa.column("b"), sa.column("c"))
    query = sa.select(table.c.i).where(to_sqlalchemy(f.expr, lambda n: table.c[n]))
    compiled = query.compile(dialect=sqlite.dialect(),
                             compile_kwargs={"literal_binds": True})
    by_sql = {r[0] for r in db.execute(str(compiled))}
    by_bridge = {i for i, r in enumerate(ROWS) if f.matches(r, "c")}
    assert by_bridge == by_sql, (text, str(compiled))


def test_values_compare_by_kind() -> None:
    import datetime as dt

    assert row_filter("qty > 3").matches({"qty": "5"}, "c")  # untyped CSV text
    assert not row_filter("qty > 3").matches({"qty": "five"}, "c")  # unknown, not an error
    assert row_filter("amount >= 10.5").matches({"amount": Decimal("10.50")}, "c")
    assert row_filter("ratio < 1").matches({"ratio": 0.5}, "c")
    assert row_filter("day >= '2024-01-01'").matches({"day": dt.date(2024, 5, 1)}, "c")
    assert row_filter("flag = true").matches({"flag": 1}, "c")
    assert not row_filter("missing = 1").matches({}, "c")
    assert row_filter("missing is null").matches({}, "c")
    assert not row_filter("not (a = 1)").matches({"a": None}, "c")  # unknown stays unknown
    assert row_filter("op in ('c', 'r')").matches({}, "r")
    assert not row_filter("op = 'd'").matches({}, "u")


def test_sql_renderings() -> None:
    f = row_filter("a > 5 and b in ('x', 'it''s\\') and not (c is null) and d != -1.5")
    assert to_postgres_sql(f.expr) == (
        "(\"a\" > 5) AND (\"b\" IN (E'x', E'it''s\\\\')) AND (NOT (\"c\" IS NULL)) "
        "AND (\"d\" <> (-1.5))")
    with pytest.raises(ValueError, match="op"):
        to_postgres_sql(row_filter("op = 'c'").expr)
    assert f.columns == {"a", "b", "c", "d"} and not f.uses_op
    assert row_filter("op = 'c' and x = 1").uses_op


def test_crossing_rule() -> None:
    f = row_filter("status = 'open'")
    open_, closed = {"id": 1, "status": "open"}, {"id": 1, "status": "closed"}
    assert f.route("c", None, open_) == ("c", None, open_)
    assert f.route("c", None, closed) is None
    assert f.route("r", None, closed) is None
    assert f.route("u", open_, open_) == ("u", open_, open_)
    assert f.route("u", closed, open_) == ("c", None, open_)  # moved in
    assert f.route("u", open_, closed) == ("d", open_, None)  # moved out
    assert f.route("u", closed, closed) is None
    assert f.route("d", open_, None) == ("d", open_, None)
    assert f.route("d", closed, None) is None
    assert f.route("t", None, None) == ("t", None, None)
    # an old row without the filter's columns (key only) cannot be judged: taken as in
    key_only = {"id": 1}
    assert f.route("u", key_only, closed) == ("d", key_only, None)
    assert f.route("u", key_only, open_) == ("u", key_only, open_)
    assert f.route("d", key_only, None) == ("d", key_only, None)
    # a filter on op alone judges both rows of an update alike
    g = row_filter("op != 'u'")
    assert g.route("u", None, open_) is None
    assert g.route("c", None, open_) == ("c", None, open_)
