"""Table shapes built by the ``postgres`` and ``mysql_binlog`` sources (pure, no server).

PostgreSQL: type names with their modifiers as ``format_type`` writes them, the JSON
type each value decoder rule produces (checked against what ``ValueDecoder.decode``
really returns), one shape per look (an identical Relation message, a snapshot then the
stream: the same object), column rules, the key, shapes on every kind of event.
MySQL: a table map and ``information_schema`` describe a table alike (same
fingerprint), the JSON types follow :mod:`cdc_bridge.adapters.mysql_binlog.values`, and
events (truncates too) carry the table's shape.
"""

from __future__ import annotations

import datetime as dt
import decimal
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

import cdc_bridge.adapters.registry  # noqa: F401  (registry first: it imports the adapters)
from cdc_bridge.adapters.mysql_binlog import changes as my
from cdc_bridge.adapters.mysql_binlog.position import BinlogPos, Position
from cdc_bridge.adapters.mysql_binlog.shapes import (
    ColumnFacts,
    facts_from_binlog,
    facts_from_catalogue,
    nullable_bits,
    table_shape,
)
from cdc_bridge.adapters.mysql_binlog.values import RowConverter, spec_from_binlog
from cdc_bridge.adapters.postgres import pgoutput as po
from cdc_bridge.adapters.postgres.changes import EventBuilder, TxMeta
from cdc_bridge.adapters.postgres.setup import ColumnInfo, TableInfo
from cdc_bridge.adapters.postgres.shapes import modifier_text, source_type
from cdc_bridge.adapters.postgres.values import PgType, ValueDecoder
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.events import dumps
from cdc_bridge.kernel.shapes import ColumnShape, TableShape

# ---------------------------------------------------------------- postgres

OID = {"bool": 16, "bytea": 17, "int8": 20, "int2": 21, "int4": 23, "text": 25, "oid": 26,
       "json": 114, "float4": 700, "float8": 701, "bpchar": 1042, "varchar": 1043,
       "date": 1082, "time": 1083, "timestamp": 1114, "timestamptz": 1184,
       "interval": 1186, "timetz": 1266, "bit": 1560, "varbit": 1562, "numeric": 1700,
       "uuid": 2950, "jsonb": 3802, "_int4": 1007, "_varchar": 1015, "money": 790,
       "inet": 869}
VARHDRSZ = 4


def numeric_mod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + VARHDRSZ


@pytest.mark.parametrize(("name", "mod", "text"), [
    ("varchar", 20 + VARHDRSZ, "varchar(20)"),
    ("bpchar", 5 + VARHDRSZ, "bpchar(5)"),
    ("varchar", -1, "varchar"),
    ("numeric", numeric_mod(10, 2), "numeric(10,2)"),
    ("numeric", numeric_mod(5, -2), "numeric(5,-2)"),
    ("numeric", -1, "numeric"),
    ("timestamptz", 3, "timestamptz(3)"),
    ("timestamp", -1, "timestamp"),
    ("time", 0, "time(0)"),
    ("interval", -1, "interval"),
    ("interval", ((1 << 3 | 1 << 10 | 1 << 11 | 1 << 12) << 16) | 3, "interval day to second(3)"),
    ("interval", ((1 << 2 | 1 << 1) << 16) | 0xFFFF, "interval year to month"),
    ("bit", 8, "bit(8)"),
    ("varbit", 16, "varbit(16)"),
    ("int4", -1, "int4"),
])
def test_pg_type_names_with_modifiers(name: str, mod: int, text: str) -> None:
    assert source_type(ValueDecoder(), OID[name], mod) == text
    assert text == name + modifier_text(name, mod)


def test_pg_arrays_domains_and_unknown_types() -> None:
    values = ValueDecoder()
    assert source_type(values, OID["_int4"], -1) == "int4[]"
    assert source_type(values, OID["_varchar"], 20 + VARHDRSZ) == "varchar(20)[]"
    assert source_type(values, 999_999, -1) == "oid 999999"
    values.add_types([PgType(50_001, "posint", "d", base_oid=OID["int4"]),
                      PgType(50_002, "mood", "e"),
                      PgType(50_003, "pair", "c", fields=(("a", OID["int4"]),
                                                          ("b", OID["text"]))),
                      PgType(50_004, "_mood", "b", element_oid=50_002)])
    assert source_type(values, 50_001, -1) == "posint"
    assert values.json_shape(50_001) == ("integer", None)  # a domain: as its base type
    assert values.json_shape(50_002) == ("string", None)  # an enum: its label
    assert values.json_shape(50_003) == ("object", None)
    assert source_type(values, 50_004, -1) == "mood[]"
    assert values.json_shape(50_004) == ("array", None)
    assert values.json_shape(999_999) == ("string", None)  # unknown: the server's text


#: (type, a value's text form, expected (json_type, format)).
PG_SAMPLES = [
    ("int2", "7", ("integer", None)), ("int4", "-3", ("integer", None)),
    ("int8", "9223372036854775807", ("integer", None)), ("oid", "16384", ("integer", None)),
    ("float4", "1.5", ("number", None)), ("float8", "2.25", ("number", None)),
    ("numeric", "1.50", ("string", None)), ("bool", "t", ("boolean", None)),
    ("text", "x", ("string", None)), ("varchar", "y", ("string", None)),
    ("bpchar", "z  ", ("string", None)), ("date", "2024-01-31", ("string", "date")),
    ("time", "13:45:00.5", ("string", None)), ("timetz", "13:45:00+02", ("string", "time")),
    ("timestamp", "2024-01-31 13:45:00", ("string", None)),
    ("timestamptz", "2024-01-31 13:45:00+02", ("string", "date-time")),
    ("interval", "1 day", ("string", None)), ("bytea", "\\x00ff", ("string", "byte")),
    ("uuid", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", ("string", "uuid")),
    ("json", '{"a": 1}', ("any", None)), ("jsonb", "[1, 2]", ("any", None)),
    ("_int4", "{1,2,NULL}", ("array", None)), ("money", "$1.00", ("string", None)),
    ("inet", "10.0.0.1", ("string", None)),
]
PY_JSON = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array",
           dict: "object"}


@pytest.mark.parametrize(("name", "text", "expected"), PG_SAMPLES)
def test_pg_json_type_is_what_the_decoder_writes(name: str, text: str,
                                                 expected: tuple[str, str | None]) -> None:
    values = ValueDecoder()
    assert values.json_shape(OID[name]) == expected
    value = values.decode(OID[name], text)
    if expected[0] != "any":
        assert PY_JSON[type(value)] == expected[0], (name, value)
    if expected[1] == "date-time":
        assert value.endswith("Z")


def relation(columns: list[tuple[int, str, str, int]], ident: str = "d",
             oid: int = 16400) -> po.Relation:
    """``columns``: (flags, name, type, modifier)."""
    return po.Relation(oid, "public", "t", ident, tuple(
        po.Column(bool(flags & 1), name, OID[t], mod) for flags, name, t, mod in columns))


COLS = [(1, "id", "int4", -1), (0, "name", "varchar", 20 + VARHDRSZ),
        (0, "amount", "numeric", numeric_mod(10, 2)), (0, "at", "timestamptz", -1)]


def builder(rules: ColumnRules | None = None, pk: list[str] | None = None,
            not_null: dict[str, bool] | None = None) -> EventBuilder:
    nn = not_null or {}
    cols = [ColumnInfo(n, OID[t], m, nn.get(n)) for _f, n, t, m in COLS]
    info = TableInfo(16400, "public", "t", cols, pk or ["id"], "d", 0, rules)
    return EventBuilder("shop", {"public.t": info}, ValueDecoder())


def test_pg_relation_shape_columns_and_key() -> None:
    b = builder()
    rel = b.relation(relation([(0, "code", "text", -1), *COLS[1:], (1, "id", "int4", -1)]))
    b.describe(rel, {"id": True, "code": True, "name": False})
    shape = b.shape_of(rel)
    assert shape.names() == ["code", "name", "amount", "at", "id"]
    assert [c.source_type for c in shape.columns] == [
        "text", "varchar(20)", "numeric(10,2)", "timestamptz", "int4"]
    assert [c.json_type for c in shape.columns] == [
        "string", "string", "string", "string", "integer"]
    assert shape.column("at") == ColumnShape("at", "timestamptz", "string", None, "date-time")
    assert [c.nullable for c in shape.columns] == [False, True, None, None, False]
    assert shape.key == ("id",)


def test_pg_identical_relation_message_same_shape_and_fingerprint() -> None:
    b = builder()
    first = b.relation(relation(COLS))
    b.describe(first, {"id": True, "name": False, "amount": False, "at": False})
    again = b.relation(relation(COLS))  # a reconnect: the server sends it again
    assert again is not first
    b.describe(again, {"id": True, "name": False, "amount": False, "at": False})
    assert again.shape is first.shape
    # a new builder (a restart) makes a new object with the same fingerprint
    other = builder()
    rel = other.relation(relation(COLS))
    other.describe(rel, {"id": True, "name": False, "amount": False, "at": False})
    assert rel.shape is not first.shape
    assert first.shape is not None and rel.shape is not None
    assert rel.shape.fingerprint() == first.shape.fingerprint()
    # a changed look: a new fingerprint
    added = b.relation(relation([*COLS, (0, "note", "text", -1)]))
    b.describe(added, {"id": True})
    assert added.shape is not None and added.shape.fingerprint() != first.shape.fingerprint()
    retyped = b.relation(relation([COLS[0], (0, "name", "varchar", 40 + VARHDRSZ), *COLS[2:]]))
    assert b.shape_of(retyped).column("name") == ColumnShape("name", "varchar(40)", "string")


def test_pg_snapshot_then_stream_is_one_shape() -> None:
    nn = {"id": True, "name": False, "amount": True, "at": False}
    b = builder(not_null=nn)
    snap = b.table_state(b.tables["public.t"])
    assert snap.shape is not None and [c.nullable for c in snap.shape.columns] == [
        False, True, False, True]
    rel = b.relation(relation(COLS))
    b.describe(rel, nn)
    assert rel.shape is snap.shape
    # a composite primary key: column order in both (catalogue order may differ)
    b2 = builder(pk=["at", "id"], not_null=nn)
    snap2 = b2.table_state(b2.tables["public.t"])
    rel2 = b2.relation(relation([(1, n, t, m) if n in ("id", "at") else (0, n, t, m)
                                 for _f, n, t, m in COLS]))
    b2.describe(rel2, nn)
    assert rel2.shape is snap2.shape and rel2.shape is not None
    assert rel2.shape.key == ("id", "at")


def test_pg_column_rules_shape_the_shape() -> None:
    rules = ColumnRules(exclude=["amount"], mask=["name"], mask_salt="s")
    b = builder(rules)
    rel = b.relation(relation(COLS))
    shape = b.shape_of(rel)
    assert shape.names() == ["id", "name", "at"]
    assert shape.column("name") == ColumnShape("name", "varchar(20)", "string", None, None)
    tx = TxMeta("0/10", 5, 0)
    ins = po.Insert(16400, po.TupleData(("1", "bob", "1.50", "2024-01-01 00:00:00+00")))
    ev = b.change(ins, rel, tx, 0, {})
    assert ev is not None and ev.after is not None
    assert list(ev.after) == shape.names() and ev.shape is shape


def test_pg_every_event_kind_carries_the_one_shape() -> None:
    b = builder()
    rel = b.relation(relation(COLS))
    tx = TxMeta("0/10", 5, 0)
    row = po.TupleData(("1", "bob", "1.50", "2024-01-01 00:00:00+00"))
    events = [b.change(po.Insert(16400, row), rel, tx, 0, {}),
              b.change(po.Update(16400, row), rel, tx, 1, {}),
              b.change(po.Delete(16400, key=po.TupleData(("1", None, None, None))), rel, tx,
                       2, {})]
    events += [ev for _i, ev in b.truncates(po.Truncate((16400,), False, False), tx, 3, {})]
    snap = b.snapshot_event(rel, ["2", "x", "0", None], "snap:1", 0, {})
    shapes = {id(e.shape) for e in [*events, snap] if e is not None}
    assert len(events) == 4 and shapes == {id(rel.shape)} and rel.shape is not None
    # the shape says what the row images hold, value by value
    after = events[0].after if events[0] is not None else None
    assert after is not None
    for c in rel.shape.columns:
        assert PY_JSON[type(after[c.name])] == c.json_type


# ---------------------------------------------------------------- mysql_binlog

#: (name, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, octets, precision, scale, fsp, collation,
#: MariaDB JSON) as information_schema has them, and the table map column
#: mysql-replication decodes for the same column.
MY_COLUMNS: list[tuple[tuple[Any, ...], dict[str, Any], bool, str, tuple[str, str | None]]] = [
    (("id", "bigint", "bigint(20) unsigned", "NO", None, 20, 0, None, None, False),
     {"type": 8, "unsigned": True, "is_primary": True}, False, "bigint unsigned",
     ("integer", None)),
    (("d", "decimal", "decimal(30,10)", "YES", None, 30, 10, None, None, False),
     {"type": 246, "precision": 30, "decimals": 10}, True, "decimal(30,10)", ("string", None)),
    (("dt", "datetime", "datetime(6)", "YES", None, None, None, 6, None, False),
     {"type": 18, "fsp": 6}, True, "datetime(6)", ("string", None)),
    (("ts", "timestamp", "timestamp", "YES", None, None, None, 0, None, False),
     {"type": 17, "fsp": 0}, True, "timestamp", ("string", "date-time")),
    (("e", "enum", "enum('a','b''c')", "YES", 3, None, None, None, "utf8mb4_general_ci", False),
     {"type": 247, "enum_values": ["", "a", "b'c"]}, True, "enum('a','b''c')",
     ("string", None)),
    (("s", "set", "set('x','y')", "YES", 3, None, None, None, "utf8mb4_general_ci", False),
     {"type": 248, "set_values": ["x", "y"]}, True, "set('x','y')", ("array", None)),
    (("b", "bit", "bit(10)", "YES", None, 10, None, None, None, False),
     {"type": 16, "bits": 10}, True, "bit(10)", ("string", None)),
    (("bl", "blob", "blob", "YES", 65535, None, None, None, None, False),
     {"type": 252, "length_size": 2, "collation_name": "binary"}, True, "blob",
     ("string", "byte")),
    (("tx", "mediumtext", "mediumtext", "NO", 16777215, None, None, None,
      "utf8mb4_general_ci", False),
     {"type": 252, "length_size": 3, "collation_name": "utf8mb4_general_ci"}, False,
     "mediumtext", ("string", None)),
    (("v", "varchar", "varchar(20)", "NO", 80, None, None, None, "utf8mb4_general_ci", False),
     {"type": 15, "max_length": 80, "collation_name": "utf8mb4_general_ci"}, False,
     "varchar(20)", ("string", None)),
    (("c", "char", "char(3)", "YES", 3, None, None, None, "latin1_swedish_ci", False),
     {"type": 254, "max_length": 3, "collation_name": "latin1_swedish_ci"}, True, "char(3)",
     ("string", None)),
    (("vb", "varbinary", "varbinary(16)", "YES", 16, None, None, None, None, False),
     {"type": 15, "max_length": 16, "collation_name": "binary"}, True, "varbinary(16)",
     ("string", "byte")),
    (("j", "longtext", "longtext", "YES", 4294967295, None, None, None, "utf8mb4_bin", True),
     {"type": 252, "length_size": 4, "collation_name": "utf8mb4_bin"}, True, "json",
     ("any", None)),
    (("f", "float", "float", "YES", None, 12, None, None, None, False), {"type": 4}, True,
     "float", ("number", None)),
    (("tm", "time", "time(3)", "YES", None, None, None, 3, None, False),
     {"type": 19, "fsp": 3}, True, "time(3)", ("number", None)),
    (("dd", "date", "date", "YES", None, None, None, None, None, False), {"type": 10}, True,
     "date", ("string", "date")),
    (("y", "year", "year(4)", "YES", None, None, None, None, None, False), {"type": 13},
     True, "year", ("integer", None)),
    (("n", "tinyint", "tinyint(1)", "YES", None, 3, 0, None, None, False),
     {"type": 1, "unsigned": False}, True, "tinyint", ("integer", None)),
]


def _binlog_column(name: str, attrs: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(name=name, **attrs)


def test_mysql_table_map_and_catalogue_describe_a_table_alike() -> None:
    cat = [facts_from_catalogue(*row) for row, *_ in MY_COLUMNS]
    log = [facts_from_binlog(_binlog_column(row[0], attrs), nullable, row[9])
           for row, attrs, nullable, *_ in MY_COLUMNS]
    assert cat == log
    a = table_shape(cat, ["id"], None, False)
    b = table_shape(log, ["id"], None, False)
    assert a.fingerprint() == b.fingerprint()
    assert [c.source_type for c in a.columns] == [r[3] for r in MY_COLUMNS]
    assert [(c.json_type, c.format) for c in a.columns] == [r[4] for r in MY_COLUMNS]
    assert [c.nullable for c in a.columns] == [r[2] for r in MY_COLUMNS]
    # DATETIME converted to UTC (datetime_timezone): a date-time then
    utc = table_shape(cat, ["id"], None, True)
    assert utc.column("dt") == ColumnShape("dt", "datetime(6)", "string", True, "date-time")


def test_mysql_json_types_are_what_the_converter_writes() -> None:
    specs = [spec_from_binlog("i", 8), spec_from_binlog("tm", 19), spec_from_binlog("s", 248,
             labels=["x"]), spec_from_binlog("d", 246), spec_from_binlog("ts", 17),
             spec_from_binlog("bl", 252)]
    row = RowConverter(specs).from_binlog({
        "i": 5, "tm": dt.timedelta(seconds=1.5), "s": {"x"}, "d": decimal.Decimal("1.50"),
        "ts": dt.datetime(2024, 1, 1), "bl": b"\x00\xff"})
    wire = orjson.loads(dumps(row))
    facts = {f.name: f for f in (
        ColumnFacts("i", "bigint"), ColumnFacts("tm", "time"), ColumnFacts("s", "set"),
        ColumnFacts("d", "decimal", params=(3, 2)), ColumnFacts("ts", "timestamp", params=(0,)),
        ColumnFacts("bl", "blob"))}
    shape = table_shape(facts.values(), [], None, False)
    for c in shape.columns:
        assert PY_JSON[type(wire[c.name])] == c.json_type, c
    assert wire["ts"].endswith("Z") and shape.column("ts").format == "date-time"  # type: ignore[union-attr]


def test_mysql_null_bitmap_and_unknown_charset_width() -> None:
    assert nullable_bits(b"\x05", 3) == [True, False, True]
    assert nullable_bits(None, 2) == [None, None]
    odd = facts_from_catalogue("v", "varchar", "varchar(9)", "YES", 18, None, None, None,
                               "weird_ci", False)
    assert table_shape([odd], [], None, False).columns[0].source_type == "varchar(18 bytes)"


def _asm() -> my.TxAssembler:
    return my.TxAssembler(my.EventBuilder("erp", my.TableFilter(["db.*"], [])),
                          Position(at=BinlogPos("b.000001", 4)))


def test_mysql_events_and_truncates_carry_the_table_shape() -> None:
    asm = _asm()
    shape = table_shape([ColumnFacts("id", "int", False)], ["id"], None, False)
    start = BinlogPos("b.000001", 100)
    asm.feed(my.TxBegin(start, "0-1-1", 0, True))
    events = asm.feed(my.Rows("c", "db", "t", ["id"], [(None, {"id": 1}), (None, {"id": 2})],
                              0, shape))
    asm.feed(my.TxEnd(BinlogPos("b.000001", 200), 1, 0))
    assert [e.shape for e in events] == [shape, shape]
    trunc = asm.feed(my.Query(BinlogPos("b.000001", 200), BinlogPos("b.000001", 300), "db",
                              "TRUNCATE TABLE t", 0))
    assert len(trunc) == 1 and trunc[0].shape is shape
    asm.feed(my.Query(BinlogPos("b.000001", 300), BinlogPos("b.000001", 400), "db",
                      "ALTER TABLE t ADD COLUMN x int", 0))
    trunc = asm.feed(my.Query(BinlogPos("b.000001", 400), BinlogPos("b.000001", 500), "db",
                              "TRUNCATE TABLE t", 0))
    assert len(trunc) == 1 and trunc[0].shape is None  # its look after the DDL is unknown


def test_mysql_snapshot_shape_is_reused_and_ruled() -> None:
    rules = ColumnRules(exclude=["secret"], mask=["email"])
    b = my.EventBuilder("erp", my.TableFilter(["db.*"], [], {"db.t": rules}))
    facts = [ColumnFacts("id", "int", False), ColumnFacts("email", "varchar", True, params=(9,)),
             ColumnFacts("secret", "text", True)]
    first = b.shape("db", "t", facts, ["id"])
    assert first.names() == ["id", "email"] and first.key == ("id",)
    assert b.shape("db", "t", list(facts), ["id"]) is first
    ev = b.snapshot_event("db", "t", ["id"], {"id": 1, "email": "a@b", "secret": "s"},
                          "snap:1.1@x", [1], 0, shape=first)
    assert ev is not None and ev.shape is first and ev.after is not None
    assert list(ev.after) == first.names()
    assert isinstance(first, TableShape)
