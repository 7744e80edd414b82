"""Table shapes of the sql_poll and files sources, and declared schemas of routed outbox
events: the pure parts, plus sql_poll's look check on a SQLite file (no server)."""

from __future__ import annotations

import datetime as dt
import decimal
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from cdc_bridge.adapters.contract import AdapterContext
from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.formats.types import RowError
from cdc_bridge.adapters.files.reader import RawRecord
from cdc_bridge.adapters.files.session import EventBuilder, FileSession, Parsed
from cdc_bridge.adapters.files.shapes import ShapeCache, columns_of, layout_shape
from cdc_bridge.adapters.outbox_table import (
    DATASCHEMA_HEADER,
    SCHEMA_VERSION_HEADER,
    declared_schema,
    outbox_message,
)
from cdc_bridge.adapters.sql_poll.adapter import SqlPollAdapter
from cdc_bridge.adapters.sql_poll.config import PollTable, SqlPollConfig
from cdc_bridge.adapters.sql_poll.cursor_mode import CursorTable
from cdc_bridge.adapters.sql_poll.diff_mode import DiffTable
from cdc_bridge.adapters.sql_poll.shapes import json_of, look_of, table_shape
from cdc_bridge.adapters.sql_poll.source import TableSource, create_engine
from cdc_bridge.adapters.sql_poll.values import same_table
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.client import outbox as client_outbox
from cdc_bridge.kernel.errors import SourceSetupError
from cdc_bridge.kernel.events import ChangeEvent

# --- sql_poll: types ----------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "dialect", "expected"), [
    (sa.Integer(), "sqlite", ("integer", None)),
    (mysql.BIGINT(unsigned=True), "mysql", ("integer", None)),
    (mysql.TINYINT(display_width=1), "mariadb", ("integer", None)),
    (sa.Numeric(10, 2), "postgresql", ("string", None)),
    (mysql.DECIMAL(10, 2), "mysql", ("string", None)),
    (sa.Float(asdecimal=False), "mysql", ("number", None)),
    (mysql.DOUBLE(asdecimal=False), "mariadb", ("number", None)),
    (postgresql.DOUBLE_PRECISION(), "postgresql", ("any", None)),  # NaN is a string
    (sa.Boolean(), "postgresql", ("boolean", None)),
    (sa.String(20), "mysql", ("string", None)),
    (sa.Enum("a", "b"), "mysql", ("string", None)),
    (mysql.SET("a", "b"), "mysql", ("array", None)),
    (sa.LargeBinary(), "postgresql", ("string", "byte")),
    (mysql.VARBINARY(8), "mysql", ("string", "byte")),
    (mysql.MEDIUMBLOB(), "mysql", ("string", "byte")),
    (sa.DateTime(timezone=True), "postgresql", ("string", "date-time")),
    (sa.DateTime(), "mysql", ("string", None)),  # no offset written: not RFC 3339
    (mysql.TIMESTAMP(), "mysql", ("string", None)),
    (sa.Date(), "mysql", ("string", "date")),
    (sa.Time(), "mysql", ("string", None)),
    (sa.Interval(), "postgresql", ("number", None)),
    (sa.Uuid(), "postgresql", ("string", "uuid")),
    (postgresql.JSONB(), "postgresql", ("any", None)),
    (sa.JSON(), "mysql", ("any", None)),
    (postgresql.ARRAY(sa.Integer()), "postgresql", ("array", None)),
    (sa.types.NullType(), "sqlite", ("any", None)),
    (mysql.BIT(1), "mysql", ("any", None)),
])
def test_json_type_follows_what_the_poller_writes(kind: sa.types.TypeEngine[object],
                                                   dialect: str,
                                                   expected: tuple[str, str | None]) -> None:
    assert json_of(kind, dialect) == expected


def _table() -> sa.Table:
    return sa.Table("inv", sa.MetaData(),
                    sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("amount", sa.Numeric(10, 2), nullable=False),
                    sa.Column("email", sa.String(80)),
                    sa.Column("secret", sa.Text),
                    sa.Column("at", sa.DateTime(timezone=True)))


def test_table_shape_respects_column_rules_and_is_reused_while_the_look_holds() -> None:
    dialect = postgresql.dialect()
    cols = list(_table().c)
    rules = ColumnRules(exclude=["secret"], mask=["email"])
    shape = table_shape(cols, ["id"], rules, dialect)
    assert shape.names() == ["id", "amount", "email", "at"] and shape.key == ("id",)
    assert [(c.source_type, c.json_type, c.nullable, c.format) for c in shape.columns] == [
        ("INTEGER", "integer", False, None), ("NUMERIC(10, 2)", "string", False, None),
        ("VARCHAR(80)", "string", True, None),  # masked: its hash
        ("TIMESTAMP WITH TIME ZONE", "string", True, "date-time")]
    assert table_shape(cols, ["id"], rules, dialect, shape) is shape
    wider = table_shape(cols, ["id"], ColumnRules(exclude=["email"]), dialect, shape)
    assert wider is not shape and wider.names() == ["id", "amount", "secret", "at"]
    only = table_shape(cols, ["id"], ColumnRules(include=["id", "at"]), dialect)
    assert only.names() == ["id", "at"]


def test_look_signature_and_table_identity() -> None:
    assert look_of([("id", "int(11)", "NO"), ("note", "varchar(3)", "YES"),
                    ("x", "", None), ("y", "text", 1)]) == (
        ("id", "int(11)", False), ("note", "varchar(3)", True), ("x", "", None),
        ("y", "text", True))
    # MariaDB: an in-place ALTER moves the creation time, keeps the InnoDB table id
    assert same_table("2026-01-01 10:00:00#18", "2026-01-01 10:05:00#18")
    assert not same_table("2026-01-01 10:00:00#18", "2026-01-01 10:00:00#19")
    assert not same_table("2026-01-01 10:00:00#", "2026-01-01 10:05:00#")
    assert not same_table("2026-01-01 10:00:00", "2026-01-01 10:05:00")
    assert same_table("16384", "16384") and not same_table("16384", "16390")


# --- sql_poll: the look check on a SQLite file ---------------------------------------------


def _sqlite(tmp_path: Path) -> sa.Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE inv (id INTEGER PRIMARY KEY, amount NUMERIC(10,2) "
                          "NOT NULL, note TEXT, legacy TEXT, at DATETIME)")
        c.exec_driver_sql("INSERT INTO inv VALUES (1, 1.5, 'a', 'x', '2024-01-01 10:00')")
    return engine


def _poll(table: CursorTable, engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        table.source.refresh(conn)
        after = table.begin_poll(conn, 0)
        return list(table.page(conn, after, 0).events)


def test_sql_poll_sees_added_and_dropped_columns_without_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = _sqlite(tmp_path)
    source = TableSource(engine, PollTable(name="inv", columns={"exclude": ["legacy"]}))
    assert source.shape is not None
    v1 = source.shape
    assert v1.names() == ["id", "amount", "note", "at"]
    assert v1.column("at") is not None and v1.column("at").source_type == "DATETIME"  # type: ignore[union-attr]
    table = CursorTable("erp", source, batch_size=10, lag_s=0, max_window_rows=0,
                        progress_interval_s=60)
    first = _poll(table, engine)
    with engine.begin() as c:
        c.exec_driver_sql("INSERT INTO inv (id, amount) VALUES (2, 2)")
    second = _poll(table, engine)
    assert [e.shape for e in first + second] == [v1, v1]  # type: ignore[attr-defined]
    assert all(e.shape is v1 for e in first + second)  # type: ignore[attr-defined]

    with engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE inv ADD COLUMN currency VARCHAR(3)")
        c.exec_driver_sql("INSERT INTO inv (id, amount, currency) VALUES (3, 3, 'EUR')")
    events = _poll(table, engine)
    v2 = source.shape
    assert v2 is not v1 and v2.names() == ["id", "amount", "note", "at", "currency"]
    assert [(e.after, e.shape is v2) for e in events] == [  # type: ignore[attr-defined]
        ({"id": 3, "amount": decimal.Decimal("3.00"), "note": None, "at": None,
          "currency": "EUR"}, True)]

    with engine.begin() as c:  # the excluded column dropped: a warning, not an error
        c.exec_driver_sql("ALTER TABLE inv DROP COLUMN legacy")
    with caplog.at_level(logging.WARNING), engine.connect() as conn:
        assert source.refresh(conn) and source.shape is v2  # the events look the same
    assert "'legacy'" in caplog.text
    with engine.begin() as c:  # and back: still the same look
        c.exec_driver_sql("ALTER TABLE inv ADD COLUMN legacy TEXT")
    with engine.connect() as conn:
        assert source.refresh(conn) and source.shape is v2
        assert not source.refresh(conn)
    with engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE inv DROP COLUMN note")
        c.exec_driver_sql("INSERT INTO inv (id, amount) VALUES (4, 4)")
    events = _poll(table, engine)
    assert source.shape is not None and source.shape.names() == ["id", "amount", "at",
                                                                 "currency"]
    assert [e.after for e in events] == [  # type: ignore[attr-defined]
        {"id": 4, "amount": decimal.Decimal("4.00"), "at": None, "currency": None}]

    with engine.begin() as c:  # the key and cursor column renamed: a clear error
        c.exec_driver_sql("ALTER TABLE inv RENAME COLUMN id TO inv_id")
    with engine.connect() as conn, pytest.raises(SourceSetupError,
                                                 match=r"no column 'id'.*while polling"):
        source.refresh(conn)


def test_query_mode_shape_names_the_query_columns(tmp_path: Path) -> None:
    engine = _sqlite(tmp_path)
    source = TableSource(engine, PollTable(
        name="q", mode="query", query="SELECT id, amount * 2 AS double FROM inv",
        query_mode="incrementing", key_columns=["id"]))
    assert source.shape is not None
    assert [(c.name, c.json_type, c.nullable) for c in source.shape.columns] == [
        ("id", "any", None), ("double", "any", None)]
    with engine.connect() as conn:
        assert not source.refresh(conn)


# --- files ------------------------------------------------------------------------------


def _files(**extra: object) -> FilesConfig:
    return FilesConfig.model_validate({"name": "exports", "type": "files", "path": "/x",
                                       "pattern": "*", **extra})


def test_csv_shape_from_header_and_types() -> None:
    cfg = _files(types={"id": "int", "price": "decimal", "ok": "bool", "day": "date",
                        "w": "float"}, key=["id"],
                 columns={"exclude": ["secret"], "mask": ["email"], "mask_salt": "s"})
    shape = layout_shape(cfg, ["id", "price", "ok", "day", "w", "email", "secret", "note"])
    assert shape.key == ("id",)
    assert [(c.name, c.json_type, c.nullable, c.format) for c in shape.columns] == [
        ("id", "integer", True, None), ("price", "string", True, None),
        ("ok", "boolean", True, None), ("day", "string", True, "date"),
        ("w", "any", True, None), ("email", "string", False, None),
        ("note", "string", False, None)]
    cache = ShapeCache(cfg)
    one = cache.get(("id", "note"))
    assert one is cache.get(("id", "note")) and one is not cache.get(("id", "note", "x"))
    assert cache.get(None) is None


def test_fixed_width_shape_from_layout_and_jsonl_has_none() -> None:
    cfg = _files(format="fixed_width", fixed_width={"fields": [
        {"name": "id", "start": 1, "length": 4, "type": "int"},
        {"name": "amount", "start": 5, "length": 6, "type": "decimal", "implied_decimals": 2},
        {"name": "name", "start": 11, "length": 10}]})
    columns = columns_of(cfg, None)
    assert columns == ("id", "amount", "name")
    shape = layout_shape(cfg, columns)
    assert [(c.name, c.source_type, c.json_type) for c in shape.columns] == [
        ("id", "int at 1 length 4", "integer"),
        ("amount", "decimal at 5 length 6, 2 implied decimals", "string"),
        ("name", "str at 11 length 10", "string")]
    assert columns_of(_files(format="jsonl"), ["a"]) is None


def test_files_events_share_one_shape_per_header(tmp_path: Path) -> None:
    cfg = _files(types={"id": "int"}, key=["id"])
    builder = EventBuilder(cfg)
    shapes = []
    for name, text in (("a.csv", "id,v\n1,x\n"), ("b.csv", "id,v\n2,y\n"),
                       ("c.csv", "\ufeffid,v,w\n3,z,1\n")):
        path = tmp_path / name
        path.write_text(text)
        session = FileSession(cfg, path, None, 1)
        parsed, _ = session.read(10, final=True)
        events, dead = builder.build(parsed, name, name, columns=session.columns())
        session.close()
        assert not dead and len(events) == 1
        shapes.append(events[0].shape)
    assert shapes[0] is shapes[1] and shapes[2] is not shapes[0]
    assert shapes[2] is not None and shapes[2].names() == ["id", "v", "w"]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,id\n1,2\n")
    session = FileSession(cfg, bad, None, 1)
    assert session.read_columns() is None  # a bad header: its rows are dead letters
    session.close()
    events, dead = builder.build([Parsed(RawRecord(0, 1, b"{}"), {"id": 1})], "j", "j")
    assert events[0].shape is None and not dead
    with pytest.raises(RowError):
        builder.key_of({})


# --- routed outbox events -------------------------------------------------------------------


def test_declared_schema_headers() -> None:
    assert (SCHEMA_VERSION_HEADER, DATASCHEMA_HEADER) == (
        client_outbox.SCHEMA_VERSION_HEADER, client_outbox.DATASCHEMA_HEADER)
    headers = client_outbox.schema_headers(3, "https://ex.com/order/3")
    assert declared_schema({**headers, "Trace-Id": "t"}) == (3, "https://ex.com/order/3",
                                                             {"Trace-Id": "t"})
    assert declared_schema({"cdc-schema-version": 2}) == (2, None, {})
    assert declared_schema({"Cdc-Schema-Version": "0", "Cdc-Dataschema": "no uri"}) == (
        None, None, {"Cdc-Schema-Version": "0", "Cdc-Dataschema": "no uri"})
    assert declared_schema(None) == (None, None, {})
    assert client_outbox.schema_headers(None, None) == {}
    for version, uri in ((0, None), (True, None), ("3", None), (None, "relative/path"),
                         (None, "https://a b")):
        with pytest.raises(ValueError):
            client_outbox.schema_headers(version, uri)  # type: ignore[arg-type]


def test_routed_body_carries_the_declared_schema_and_is_unchanged_without() -> None:
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    plain = outbox_message("o", "id-1", "order", "7", "paid", '{"a":1}', {"T": "v"}, at)
    assert plain.body == (
        b'{"specversion":"1.0","id":"id-1","source":"/cdc-bridge/o","type":"paid",'
        b'"subject":"7","datacontenttype":"application/json","time":'
        b'"2026-01-02T03:04:05.000Z","aggregatetype":"order","aggregateid":"7",'
        b'"data":{"a":1}}')
    declared = outbox_message("o", "id-1", "order", "7", "paid", '{"a":1}',
                              {"T": "v", "Cdc-Schema-Version": "4",
                               "Cdc-Dataschema": "urn:schema:order:4"}, at)
    assert declared.headers == {"T": "v"}
    assert declared.body == plain.body.replace(
        b'"aggregateid":"7",',
        b'"aggregateid":"7","dataschema":"urn:schema:order:4","schemaversion":4,')


def test_a_column_dropped_between_look_and_read_is_looked_at_again(tmp_path: Path) -> None:
    """The poll's look is taken, then a column goes away before a page is read: the read
    fails, the adapter looks again, rebuilds and reads the page once more."""
    engine = _sqlite(tmp_path)
    config = SqlPollConfig.model_validate({
        "name": "erp", "type": "sql_poll", "url": str(engine.url), "batch_size": 1,
        "tables": [{"name": "inv"}]})
    adapter = SqlPollAdapter(config, AdapterContext(tmp_path / "state"))
    adapter._open(None)
    slot = adapter.slots[0]
    events, _ = adapter._unit(slot)
    assert [e.key for e in events] == [{"id": 1}]
    assert slot.polling  # a full page: the poll goes on without a new look
    with engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE inv DROP COLUMN note")
        c.exec_driver_sql("INSERT INTO inv (id, amount) VALUES (2, 2)")
    events, _ = adapter._unit(slot)
    assert [(e.key, e.shape is not None and e.shape.names()) for e in events] == [
        ({"id": 2}, ["id", "amount", "legacy", "at"])]
    assert adapter.engine is not None
    adapter.engine.dispose()


def test_diff_mode_events_carry_the_shape_of_their_pass(tmp_path: Path) -> None:
    engine = _sqlite(tmp_path)
    config = SqlPollConfig.model_validate({
        "name": "erp", "type": "sql_poll", "url": str(engine.url),
        "tables": [{"name": "inv", "mode": "diff", "columns": {"exclude": ["legacy"]}}]})
    adapter = SqlPollAdapter(config, AdapterContext(tmp_path / "state"))
    adapter._open(None)
    slot = adapter.slots[0]
    runner = slot.runner
    assert isinstance(runner, DiffTable)

    def a_pass() -> list[ChangeEvent]:
        runner.idle_since_ms = 0
        out: list[ChangeEvent] = []
        while True:
            events, _ = adapter._unit(slot)
            out += events
            if runner.phase == "idle":
                return out

    first = a_pass()
    v1 = runner.source.shape
    assert [(e.op, e.shape is v1) for e in first] == [("r", True)]
    with engine.begin() as c:
        c.exec_driver_sql("ALTER TABLE inv ADD COLUMN currency VARCHAR(3)")
        c.exec_driver_sql("UPDATE inv SET currency = 'EUR'")
    second = a_pass()
    v2 = runner.source.shape
    assert v2 is not v1 and v2 is not None
    assert [(e.op, e.shape is v2, list(e.after or {})) for e in second] == [
        ("u", True, v2.names())]
    assert list(second[0].before or {}) == ["id", "amount", "note", "at"]
    assert a_pass() == []
    assert adapter.state is not None and adapter.engine is not None
    adapter.state.close()
    adapter.engine.dispose()
