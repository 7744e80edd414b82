"""Tests of text-form value conversion against a real PostgreSQL.

The server produces the text (its own output functions, in a non-UTC session TimeZone)
and :class:`ValueDecoder` must turn it into exactly the documented JSON-able values.
The same row also travels through a real pgoutput slot, so the type OIDs and text seen
by the replication path are covered too. Intervals use the server as oracle: its
``iso_8601`` IntervalStyle output is what ``postgres``-style text must become.
"""

from __future__ import annotations

import base64
import decimal
import json
import logging
import math
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdc_bridge.adapters.postgres.pgoutput import Insert, Relation, decode_message
from cdc_bridge.adapters.postgres.values import (
    PgType,
    ValueDecoder,
    interval_to_iso,
    parse_array,
    parse_record,
)
from cdc_bridge.kernel.events import dumps
from tests.services.postgres import PostgresServer

DB = "pg_values"
SESSION_TZ = "Asia/Kathmandu"  # +05:45: no accidental UTC or whole-hour luck
NUM40 = "1234567890123456789012345678901234567890.0123456789"
RAW_BYTES = b"\x00\xff\x00ab\x00\n\\"
TEXT = 'ünïcødé "q" \\ {a,b} (x) NULL'

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'happy', 'so so');
CREATE DOMAIN price AS numeric(12, 2) CHECK (VALUE >= 0);
CREATE TYPE addr AS (street text, zip int4, tags text[], amount price, seen timestamptz);
"""

# (SQL type, SQL literal, expected decoded value; PASS = the server's text unchanged)
PASS = object()
CASES: list[tuple[str, str, Any]] = [
    ("int2", "-32768", -32768),
    ("int4", "2147483647", 2147483647),
    ("int8", "-9223372036854775808", -9223372036854775808),
    ("oid", "4294967295", 4294967295),
    ("numeric", NUM40, NUM40),
    ("numeric", "-0", "0"),
    ("numeric", "-0.000", "0.000"),
    ("numeric", "NaN", "NaN"),
    ("numeric", "Infinity", "Infinity"),
    ("numeric", "-Infinity", "-Infinity"),
    ("numeric(10, 2)", "3.1", "3.10"),
    ("numeric", "1e-30", "0.000000000000000000000000000001"),
    ("float8", "0.1", 0.1),
    ("float8", "1.5e300", 1.5e300),
    ("float8", "NaN", "NaN"),
    ("float8", "-Infinity", "-Infinity"),
    ("float4", "0.1", 0.1),
    ("float4", "Infinity", "Infinity"),
    ("bool", "true", True),
    ("bool", "false", False),
    ("text", TEXT, TEXT),
    ("text", "", ""),
    ("varchar(10)", "ab", "ab"),
    ("char(5)", "ab", "ab   "),
    ("date", "2024-02-29", "2024-02-29"),
    ("date", "infinity", "infinity"),
    ("date", "-infinity", "-infinity"),
    ("time", "13:45:00.5", "13:45:00.500000"),
    ("time", "00:00:00", "00:00:00"),
    ("timetz", "13:45:00+05:30", "13:45:00+05:30"),
    ("timestamp", "2024-01-31 13:45:00.123456", "2024-01-31T13:45:00.123456"),
    ("timestamp", "infinity", "infinity"),
    ("timestamptz", "2024-01-31 13:45:00.123+01", "2024-01-31T12:45:00.123000Z"),
    ("timestamptz", "2024-07-01 00:00:00 UTC", "2024-07-01T00:00:00Z"),
    ("timestamptz", "-infinity", "-infinity"),
    ("interval", "1 year 2 months 3 days 04:05:06.5", "P1Y2M3DT4H5M6.5S"),
    ("interval", "-1 day +02:00:00", "P-1DT2H"),
    ("interval", "0", "PT0S"),
    ("bytea", "\\x" + RAW_BYTES.hex(), base64.b64encode(RAW_BYTES).decode()),
    ("bytea", "", ""),
    ("uuid", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
    ("json", '{"a": [1, 2.5, "ü\\u00e9"], "b": null, "c": {}}',
     {"a": [1, 2.5, "üé"], "b": None, "c": {}}),
    ("jsonb", '{"z": true, "a": [1, "ü"]}', {"a": [1, "ü"], "z": True}),
    ("jsonb", '"just a string"', "just a string"),
    ("int4[]", "{1,NULL,3}", [1, None, 3]),
    ("int4[]", "{{1,2},{3,NULL}}", [[1, 2], [3, None]]),
    ("int4[]", "{}", []),
    ("int4[]", "[0:1]={5,6}", [5, 6]),
    ("int8[]", "{{{1},{2}},{{3},{4}}}", [[[1], [2]], [[3], [4]]]),
    ("text[]", '{"a b","NULL",NULL,"q\\"uote","back\\\\slash","",ü}',
     ["a b", "NULL", None, 'q"uote', "back\\slash", "", "ü"]),
    ("text[]", "{}", []),
    ("numeric[]", "{1.10,NULL,NaN,-0}", ["1.10", None, "NaN", "0"]),
    ("float8[]", "{1.5,NaN,-Infinity}", [1.5, "NaN", "-Infinity"]),
    ("bool[]", "{t,f,NULL}", [True, False, None]),
    ("timestamptz[]", '{"2024-01-31 13:45:00+01",infinity,NULL}',
     ["2024-01-31T12:45:00Z", "infinity", None]),
    ("jsonb[]", '{"{\\"a\\": 1}",NULL,"[]"}', [{"a": 1}, None, []]),
    ("bytea[]", '{"\\\\x00ff",NULL}', ["AP8=", None]),
    ("box[]", "{(1,1),(0,0);(2,2),(1,1)}", ["(1,1),(0,0)", "(2,2),(1,1)"]),
    ("mood", "so so", "so so"),
    ("mood[]", '{sad,"so so",NULL}', ["sad", "so so", None]),
    ("price", "12.5", "12.50"),
    ("price[]", "{1,NULL,2.345}", ["1.00", None, "2.35"]),
    ("addr", "ROW('Main St, 1 \"A\"', 12345, ARRAY['x', 'y z'], 3.5, '2024-01-01 05:45+05:45')",
     {"street": 'Main St, 1 "A"', "zip": 12345, "tags": ["x", "y z"], "amount": "3.50",
      "seen": "2024-01-01T00:00:00Z"}),
    ("addr", "ROW(NULL, NULL, '{}', NULL, NULL)",
     {"street": None, "zip": None, "tags": [], "amount": None, "seen": None}),
    ("addr", "ROW('', 1, NULL, 0, NULL)",
     {"street": "", "zip": 1, "tags": None, "amount": "0.00", "seen": None}),
    ("addr[]", "ARRAY[ROW('a', 1, NULL, 1, NULL)::addr, NULL]",
     [{"street": "a", "zip": 1, "tags": None, "amount": "1.00", "seen": None}, None]),
    ("money", "12.34", PASS),
    ("inet", "192.168.0.1/24", PASS),
    ("cidr", "10.0.0.0/8", PASS),
    ("macaddr", "08:00:2b:01:02:03", PASS),
    ("point", "(1.5,-2)", PASS),
    ("int4range", "[1,10)", PASS),
    ("tstzrange", "[2024-01-01,infinity)", PASS),
    ("tsvector", "a fat cat", PASS),
    ("xml", "<a>ü</a>", PASS),
    ("bit(4)", "B'1010'", PASS),
]


def literal(sql_type: str, text: str) -> str:
    if text.startswith(("ROW(", "ARRAY[", "B'")):
        return f"({text})::{sql_type}"
    return "'" + text.replace("'", "''") + f"'::{sql_type}"


@pytest.fixture(scope="module")
def dsn(postgres_server: PostgresServer) -> Iterator[str]:
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    with psycopg.connect(postgres_server.dsn_for(DB), autocommit=True) as conn:
        conn.execute(SCHEMA)
        cols = ", ".join(f"c{i} {t}" for i, (t, _, _) in enumerate(CASES))
        conn.execute(f"CREATE TABLE v (id int PRIMARY KEY, {cols})")
        conn.execute("CREATE PUBLICATION pub FOR TABLE v")
        conn.execute("SELECT pg_create_logical_replication_slot('vslot', 'pgoutput')")
        conn.execute(f"SET TimeZone = '{SESSION_TZ}'")
        values = ", ".join(literal(t, text) for t, text, _ in CASES)
        conn.execute(f"INSERT INTO v VALUES (1, {values})")
        conn.execute("INSERT INTO v (id) VALUES (2)")  # all NULL
    yield postgres_server.dsn_for(DB)
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True, options=f"-c TimeZone={SESSION_TZ}") as c:
        yield c


def raw_text_row(conn: psycopg.Connection[Any], sql: str) -> list[tuple[int, str | None]]:
    """(type oid, text) of each column of the first row, as the server's output
    functions wrote it (the wire text format: no cast to text, which would strip
    char(n) padding)."""
    res = conn.pgconn.exec_(sql.encode())
    assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
    out = []
    for i in range(res.nfields):
        raw = res.get_value(0, i)
        out.append((res.ftype(i), None if raw is None else raw.decode()))
    return out


def check(decoded: Any, expected: Any, server_text: str | None) -> None:
    if expected is PASS:
        assert decoded == server_text
    elif isinstance(expected, float):
        assert isinstance(decoded, float) and decoded == expected
    else:
        assert decoded == expected
        assert type(decoded) is type(expected)


def test_every_type_from_server_text(conn: psycopg.Connection[Any]) -> None:
    decoder = ValueDecoder(conn)
    row = raw_text_row(conn, "SELECT * FROM v WHERE id = 1")[1:]
    decoder.ensure_types_sync(conn, [oid for oid, _ in row])
    assert not decoder.missing(oid for oid, _ in row)
    failures = []
    for (oid, text), (sql_type, lit, expected) in zip(row, CASES, strict=True):
        try:
            check(decoder.decode(oid, text), expected, text)
        except AssertionError:
            failures.append((sql_type, lit, text, decoder.decode(oid, text), expected))
    assert failures == []
    assert decoder.fallbacks == {}
    nulls = raw_text_row(conn, "SELECT * FROM v WHERE id = 2")[1:]
    assert [decoder.decode(oid, text) for oid, text in nulls] == [None] * len(CASES)


def test_same_values_through_pgoutput(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET TimeZone = 'America/St_Johns'")  # -03:30 / -02:30, yet another zone
    raw = [bytes(r[0]) for r in conn.execute(
        "SELECT data FROM pg_logical_slot_peek_binary_changes('vslot', NULL, NULL, "
        "'proto_version', '1', 'publication_names', 'pub')").fetchall()]
    msgs = [decode_message(r) for r in raw]
    rel = next(m for m in msgs if isinstance(m, Relation))
    insert = next(m for m in msgs if isinstance(m, Insert))
    decoder = ValueDecoder(conn.adapters)  # no connection: text carries its own offsets
    oids = [c.type_oid for c in rel.columns]
    decoder.ensure_types_sync(conn, oids)
    for col, text, (_, _, expected) in zip(
        rel.columns[1:], insert.new.values[1:], CASES, strict=True
    ):
        assert isinstance(text, str)
        check(decoder.decode(col.type_oid, text, col.type_modifier), expected, text)


def test_float_negative_zero_and_bytea_escape(conn: psycopg.Connection[Any]) -> None:
    decoder = ValueDecoder(conn)
    [(oid, text)] = raw_text_row(conn, "SELECT '-0'::float8")
    value = decoder.decode(oid, text)
    assert value == 0.0 and math.copysign(1.0, value) == -1.0
    conn.execute("SET bytea_output = 'escape'")
    [(oid, text)] = raw_text_row(conn, "SELECT '\\x00ff5c0a41'::bytea")
    assert text is not None and not text.startswith("\\x")
    assert decoder.decode(oid, text) == base64.b64encode(b"\x00\xff\\\nA").decode()
    assert base64.b64decode(decoder.decode(oid, "\\x" + RAW_BYTES.hex())) == RAW_BYTES


INTERVALS = [
    "0", "1 second", "-1 second", "1.5 seconds", "0.000001 seconds", "-0.25 seconds",
    "1 year", "-1 year", "1 year 1 month", "14 months", "-14 months 3 days",
    "1 day -1 second", "-1 day +1 second", "36 hours", "-36 hours 5 minutes",
    "1 year 2 mons 3 days 04:05:06.789", "-1 year -2 mons +3 days -04:05:06",
    "100000 hours", "59 minutes 59.999999 seconds", "3 days", "-3 days", "1 min",
    "178000000 years", "-178000000 years",
]


def test_interval_matches_server_iso_8601_style(conn: psycopg.Connection[Any]) -> None:
    decoder = ValueDecoder(conn)
    sql = "SELECT " + ", ".join(f"'{i}'::interval" for i in INTERVALS)
    conn.execute("SET IntervalStyle = postgres")
    postgres_style = raw_text_row(conn, sql)
    conn.execute("SET IntervalStyle = iso_8601")
    iso_style = raw_text_row(conn, sql)
    for (oid, pg_text), (_, iso_text) in zip(postgres_style, iso_style, strict=True):
        assert pg_text is not None and iso_text is not None
        assert decoder.decode(oid, pg_text) == iso_text, pg_text
        assert decoder.decode(oid, iso_text) == iso_text  # iso_8601 style passes through
    assert interval_to_iso("@ 1 year") == "@ 1 year"  # postgres_verbose: as sent


def test_unconvertible_values_fall_back_to_text_once_logged(
    conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    decoder = ValueDecoder(conn)
    row = raw_text_row(
        conn, "SELECT '0044-03-15 BC'::date, '12000-01-01'::date, '24:00:00'::time, "
        "'275000-01-01 00:00+00'::timestamptz")
    with caplog.at_level(logging.WARNING, logger="cdc_bridge.adapters.postgres.values"):
        assert [decoder.decode(oid, text) for oid, text in row] == [t for _, t in row]
    date_oid, time_oid, tstz_oid = row[0][0], row[2][0], row[3][0]
    assert decoder.fallbacks == {date_oid: 2, time_oid: 1, tstz_oid: 1}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and all("could not be converted" in w for w in warnings)
    assert not any("0044" in w or "24:00" in w for w in warnings)  # values are not logged
    # garbage the server would never send: still no exception
    assert decoder.decode(23, "12x") == "12x"
    assert decoder.decode(1007, "{1,2") == "{1,2"
    assert decoder.decode(114, "{not json") == "{not json"
    assert decoder.decode(16, "maybe") == "maybe"


def test_unknown_and_dropped_types_pass_text(conn: psycopg.Connection[Any]) -> None:
    decoder = ValueDecoder(conn)
    mood = conn.execute("SELECT 'mood'::regtype::oid").fetchone()
    assert mood is not None
    assert decoder.missing([23, 1007, mood[0], 987654]) == {mood[0], 987654}
    assert decoder.decode(987654, "(x,y)") == "(x,y)"  # never looked up: as sent
    decoder.ensure_types_sync(conn, [987654])  # no such type: remembered as text
    assert decoder.missing([987654]) == set()
    assert decoder.decode(987654, "(x,y)") == "(x,y)"
    assert decoder.decode(23, None) is None


async def test_async_ensure_types_resolves_nested_user_types(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        cur = await aconn.execute("SELECT 'addr[]'::regtype::oid, 'price'::regtype::oid")
        row = await cur.fetchone()
        assert row is not None
        addr_array, price = row
        decoder = ValueDecoder(aconn)
        assert decoder.decode(price, "1.5") == "1.5"  # unknown domain: text as sent
        await decoder.ensure_types(aconn, [addr_array])
        # the array's element, its fields and the domain's base came along
        assert decoder.missing([price]) == set()
        assert decoder.decode(addr_array, '{"(a,1,{x},2,)"}') == [
            {"street": "a", "zip": 1, "tags": ["x"], "amount": "2", "seen": None}]
        assert decoder.decode(price, "1.5") == "1.5"  # numeric: the exact text


def test_parsers_directly() -> None:
    assert parse_array('{"a\\\\b","c\\"d"}', ",", str) == ["a\\b", 'c"d']
    assert parse_array("{{},{}}", ",", str) == [[], []]
    for bad in ("", "{", "}", "{1}}", "{1}{2}", "1", "{1,{2}", '{"a}', "{a\\b}"):
        with pytest.raises(ValueError):
            parse_array(bad, ",", str)
    assert parse_record('(1,"a ""q"" \\\\",,"")', 4) == ["1", 'a "q" \\', None, ""]
    assert parse_record("()", 0) == []
    for bad, n in (("(1,2)", 3), ("1,2", 2), ("(1,2", 2), ('("a"x)', 1), ("(a)", 0)):
        with pytest.raises(ValueError):
            parse_record(bad, n)
    decoder = ValueDecoder()
    decoder.add_types([PgType(90001, "pair", "c", fields=(("a", 23), ("b", 90001)))])
    assert decoder.decode(90001, "(1,x)") == {"a": 1, "b": "x"}  # a cycle ends as text


FUZZ_DECODER = ValueDecoder()
FUZZ_DECODER.add_types([PgType(90002, "rec", "c", fields=(("a", 1007), ("b", 1184))),
                        PgType(90003, "_rec", "b", element_oid=90002),
                        PgType(90004, "dom", "d", base_oid=1231)])
FUZZ_OIDS = [16, 21, 23, 20, 700, 701, 1700, 17, 1082, 1083, 1266, 1114, 1184, 1186, 114,
             3802, 1007, 1009, 1231, 1185, 603, 1020, 90002, 90003, 90004, 2950, 99999]


@settings(max_examples=2000, deadline=1000)
@given(st.sampled_from(FUZZ_OIDS),
       st.text(alphabet=st.sampled_from('{}(),;"\\ NULtfx0129.:-+PYMDTHS[]=infity'), max_size=40)
       | st.text(max_size=40))
def test_fuzz_decode_never_raises(oid: int, text: str) -> None:
    value = FUZZ_DECODER.decode(oid, text)
    if isinstance(value, orjson.Fragment):  # a json value with long numbers: valid JSON
        json.loads(dumps(value), parse_float=decimal.Decimal,
                   parse_constant=lambda c: pytest.fail(f"{c} on the wire"))
    else:
        json.dumps(value, allow_nan=False)  # JSON types only, no NaN/inf floats


def test_json_numbers_stay_exact_as_the_server_wrote_them(
        conn: psycopg.Connection[Any]) -> None:
    decoder = ValueDecoder(conn)
    doc = ('{"int": 123456789012345678901234567890, "money": 12345678901234567.89, '
           '"huge": 1e400, "tiny": 0.1, "list": [1.5e10, -2]}')
    for sql_type in ("jsonb", "json"):
        [(oid, text)] = raw_text_row(conn, f"SELECT '{doc}'::{sql_type}")
        assert text is not None
        wire = dumps({"v": decoder.decode(oid, text)}).decode()
        body = json.loads(wire, parse_float=decimal.Decimal)  # valid JSON, exact numbers
        assert body["v"]["int"] == 123456789012345678901234567890
        assert body["v"]["money"] == decimal.Decimal("12345678901234567.89")
        assert body["v"]["huge"] == decimal.Decimal("1e400")
        assert body["v"]["list"] == [decimal.Decimal("1.5e10"), -2]
    [(oid, text)] = raw_text_row(conn, 'SELECT \'{"a": 1, "b": [0.5, "x"]}\'::jsonb')
    assert decoder.decode(oid, text) == {"a": 1, "b": [0.5, "x"]}  # plain values: parsed
