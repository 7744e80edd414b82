"""Pure logic of ``type: mysql_binlog``: values, positions and filters, transactions."""

from __future__ import annotations

import datetime as dt
import decimal

import orjson
import pytest

from cdc_bridge.adapters.mysql_binlog.changes import (
    EventBuilder,
    Query,
    Rows,
    TableFilter,
    TxAssembler,
    TxBegin,
    TxEnd,
    statement_table,
)
from cdc_bridge.adapters.mysql_binlog.config import MysqlBinlogConfig
from cdc_bridge.adapters.mysql_binlog.position import (
    BinlogPos,
    Position,
    SnapshotFilter,
    already_copied,
)
from cdc_bridge.adapters.mysql_binlog.setup import lag_bytes
from cdc_bridge.adapters.mysql_binlog.values import (
    ColumnSpec,
    RowConverter,
    bit_string,
    float32,
    spec_from_binlog,
    spec_from_sql,
)
from cdc_bridge.kernel.events import dumps


def test_binlog_and_select_rows_are_written_alike() -> None:
    sql_specs = [spec_from_sql("ts", "timestamp", "timestamp(6)", False),
                 spec_from_sql("dt", "datetime", "datetime(6)", False),
                 spec_from_sql("f", "float", "float", False),
                 spec_from_sql("b", "bit", "bit(10)", False),
                 spec_from_sql("s", "set", "set('x','y''q','z')", False),
                 spec_from_sql("j", "longtext", "longtext", True),
                 spec_from_sql("d", "decimal", "decimal(30,10)", False)]
    log_specs = [spec_from_binlog("ts", 17), spec_from_binlog("dt", 18),
                 spec_from_binlog("f", 4), spec_from_binlog("b", 16, bits=10),
                 spec_from_binlog("s", 248, labels=["x", "y'q", "z"]),
                 spec_from_binlog("j", 252, json_text=True), spec_from_binlog("d", 246)]
    ts = dt.datetime(2024, 5, 1, 10, 0, 0, 654321)
    day = dt.datetime(2024, 5, 1, 10, 0, 0, 123456)
    big = decimal.Decimal("12345678901234567890.0123456789")
    from_select = RowConverter(sql_specs).from_select(
        [ts, day, 0.1, b"\x02\xaa", {"z", "x"}, '{"a": [1, 2.5]}', big])
    from_log = RowConverter(log_specs).from_binlog(
        {"ts": ts, "dt": day, "f": 0.10000000149011612, "b": "1010101010", "s": {"x", "z"},
         "j": '{"a": [1, 2.5]}', "d": big})
    assert from_select == from_log
    wire = orjson.loads(dumps(from_log))
    assert wire == {"ts": "2024-05-01T10:00:00.654321Z", "dt": "2024-05-01T10:00:00.123456",
                    "f": 0.1, "b": "1010101010", "s": ["x", "z"], "j": {"a": [1, 2.5]},
                    "d": "12345678901234567890.0123456789"}


def test_empty_set_and_null_differ_and_datetime_zone() -> None:
    conv = RowConverter([ColumnSpec("s", "set", labels=("a",)), ColumnSpec("t", "datetime")],
                        dt.timezone(dt.timedelta(hours=2)))
    row = conv.from_binlog({"s": None, "t": dt.datetime(2024, 1, 1, 12)},
                           {"s": "empty set"})
    assert row["s"] == [] and row["t"] == dt.datetime(2024, 1, 1, 10, tzinfo=dt.UTC)
    assert conv.from_binlog({"s": None, "t": None}, {"s": "null"}) == {"s": None, "t": None}


def test_float32_and_bits() -> None:
    assert float32(0.10000000149011612) == 0.1
    assert float32(3.4028234663852886e38) == 3.4028235e38
    assert bit_string(b"\x01", 1) == "1" and bit_string("101", 8) == "00000101"


def test_positions_order_across_files() -> None:
    a, b = BinlogPos("binlog.000009", 900), BinlogPos("binlog.000010", 4)
    assert a.before(b) and not b.before(a)
    assert BinlogPos.parse(str(a)) == a
    with pytest.raises(ValueError):
        BinlogPos.parse("nope")
    assert lag_bytes([("binlog.000009", 1000), ("binlog.000010", 50)], a) == 150


def test_checkpoint_round_trip() -> None:
    pos = Position(BinlogPos("b.000001", 10), "0-1-5", BinlogPos("b.000001", 8), 3,
                   filters=[SnapshotFilter(BinlogPos("b.000002", 4), {"d.t": [5]})], gen=2)
    again = Position.from_checkpoint(orjson.loads(orjson.dumps(pos.to_checkpoint())))
    assert again == pos and again.resume_at() == BinlogPos("b.000001", 8)


def test_resume_filter_drops_exactly_what_the_new_snapshot_holds() -> None:
    at = BinlogPos("b.000001", 500)
    filters = [SnapshotFilter(at, {"d.t": [10], "d.u": None})]
    early, late = BinlogPos("b.000001", 400), BinlogPos("b.000001", 600)
    assert already_copied(filters, "d.t", (11,), early)      # read under the new snapshot
    assert not already_copied(filters, "d.t", (10,), early)  # read before the crash
    assert not already_copied(filters, "d.t", (11,), late)   # newer than the snapshot
    assert already_copied(filters, "d.u", (1,), early)
    assert not already_copied(filters, "d.v", (1,), early)


def _asm(pos: Position | None = None) -> TxAssembler:
    builder = EventBuilder("erp", TableFilter(["db.*"], ["db.skip"]))
    return TxAssembler(builder, pos or Position(BinlogPos("b.000001", 4)))


def _tx(start: int, n: int, table: str = "t") -> list[object]:
    s = BinlogPos("b.000001", start)
    rows = [(None, {"id": i, "v": "x"}) for i in range(n)]
    return [TxBegin(s, f"0-1-{start}", 1000, True),
            Rows("c", "db", table, ["id"], rows, 1000),
            TxEnd(BinlogPos("b.000001", start + 100), 7, 1000)]


def test_transactions_ids_and_mid_transaction_resume() -> None:
    asm = _asm()
    first = [e for rec in _tx(4, 5)[:2] for e in asm.feed(rec)]  # type: ignore[arg-type]
    assert [e.index for e in first] == [0, 1, 2, 3, 4]
    assert first[0].subject("cdc") == "cdc.erp.db.t.c"
    assert first[0].key == {"id": 0} and first[0].txid == "0-1-4"
    mid = asm.checkpoint()
    assert mid["tx"] == {"file": "b.000001", "pos": 4, "done": 5} and mid["pos"] == 4
    # a restart from the mid-transaction checkpoint skips what is committed, same ids
    again = _asm(Position.from_checkpoint(mid))
    out = [e for rec in _tx(4, 7) for e in again.feed(rec)]  # type: ignore[arg-type]
    assert [e.index for e in out] == [5, 6]
    ids = {e.index: e.id for e in first}
    redo = _asm(Position.from_checkpoint(mid))
    redo.pos.tx_done = 0
    assert {e.index: e.id for rec in _tx(4, 5)
            for e in redo.feed(rec) if e.index in ids} == ids  # type: ignore[arg-type]
    end = again.checkpoint()
    assert end["tx"] is None and end["pos"] == 104 and end["gtid"] == "0-1-4"


def test_ddl_truncate_and_excluded_tables() -> None:
    asm = _asm()
    assert not [e for rec in _tx(4, 2, "skip") for e in asm.feed(rec)]  # type: ignore[arg-type]
    s, e = BinlogPos("b.000001", 200), BinlogPos("b.000001", 260)
    assert not asm.feed(Query(s, e, "db", "ALTER TABLE t ADD COLUMN x int", 1))
    assert asm.ddl_tables == [("db", "t")] and not asm.in_transaction
    out = asm.feed(Query(e, BinlogPos("b.000001", 300), "", "TRUNCATE `db`.`t`", 1))
    assert [(x.op, x.table, x.schema) for x in out] == [("t", "t", "db")]
    assert asm.checkpoint()["pos"] == 300


def test_statement_tables() -> None:
    assert statement_table("truncate table `a`.`b`", "x") == ("truncate", ("a", "b"))
    assert statement_table("ALTER TABLE b ADD c int", "x") == ("ddl", ("x", "b"))
    assert statement_table("/* c */ DROP TABLE IF EXISTS `d`.`e` /* gen */", "") == (
        "ddl", ("d", "e"))
    assert statement_table("INSERT INTO t VALUES (1)", "x") == ("other", None)


def test_config() -> None:
    cfg = MysqlBinlogConfig.model_validate({
        "name": "erp", "type": "mysql_binlog", "dsn": "mysql://u:p%40ss@h:3307",
        "tables": ["db.t"]})
    ep = cfg.endpoint()
    assert (ep.host, ep.port, ep.user, ep.password) == ("h", 3307, "u", "p@ss")
    assert cfg.replica_id() == MysqlBinlogConfig.model_validate(
        cfg.model_dump()).replica_id() >= 1000
    with pytest.raises(ValueError):
        MysqlBinlogConfig.model_validate({"name": "x", "type": "mysql_binlog",
                                          "dsn": "mysql://h", "tables": ["nodot"]})


def test_snapshot_ids_carry_the_origin_and_survive_a_resume() -> None:
    from cdc_bridge.adapters.snapshot_progress import SnapshotProgress

    builder = EventBuilder("erp", TableFilter(["db.*"], []))
    first = SnapshotProgress(1, 0, ["db.t"], origin="binlog.000001:400")
    later = SnapshotProgress(1, 0, ["db.t"], origin="binlog.000003:1200")  # a new checkpoint

    def ev_id(p: SnapshotProgress) -> str:
        return builder.snapshot_event("db", "t", ["id"], {"id": 7}, p.id_prefix(), [7], 1).id

    assert ev_id(first) != ev_id(later)
    resumed = SnapshotProgress.from_json(orjson.loads(orjson.dumps(first.to_json())))
    assert ev_id(resumed) == ev_id(first) and resumed.origin == "binlog.000001:400"
    assert SnapshotProgress(1, 0, []).id_prefix() == "snap:1.0"  # checkpoints from before


def test_resnapshot_chunk_release_rules() -> None:
    from cdc_bridge.adapters.mysql_binlog.position import ResnapProgress
    from cdc_bridge.adapters.mysql_binlog.resnapshot import HeldChunk, release

    h = BinlogPos("b.000002", 500)
    rows = {f"[{i}]": {"id": i, "v": "x"} for i in (1, 2, 3)}
    chunk = HeldChunk("db.t", h, ["id"], dict(rows), [3], exhausted=False)
    chunk.observe({"id": 1, "v": "old"}, BinlogPos("b.000002", 300))  # older than the rows
    chunk.observe({"id": 2, "v": "new"}, BinlogPos("b.000002", 500))  # newer: r dropped
    chunk.observe({"id": 9, "v": "new"}, BinlogPos("b.000003", 4))    # not in the chunk
    assert not chunk.passed(BinlogPos("b.000002", 499)) and chunk.passed(h)
    assert chunk.passed(BinlogPos("b.000003", 4))
    progress = ResnapProgress(1, 2, "b.000001:4", tables=["db.t"])
    emit, done = release(chunk, progress)
    assert [r["id"] for r in emit] == [1, 3] and not done
    assert progress.after == [3] and progress.rows == 2
    again = HeldChunk("db.t", h, ["id"], dict(rows), [3], exhausted=True)
    again.observe(None, BinlogPos("b.000002", 600))  # TRUNCATE after the snapshot
    assert release(again, progress) == ([], False) and progress.after == [3]
    progress.table_done("db.t")
    assert progress.finished and progress.id_prefix() == "snap:2.1@b.000001:4"
    pos = Position(BinlogPos("b.000001", 4), resnapshot=progress)
    assert Position.from_checkpoint(orjson.loads(orjson.dumps(pos.to_checkpoint()))) == pos


def test_resnapshot_request_names() -> None:
    from cdc_bridge.adapters.mysql_binlog.resnapshot import resolve
    from cdc_bridge.adapters.mysql_binlog.setup import TableMeta

    meta = {"a.t": TableMeta("a", "t", [], ["id"]), "b.t": TableMeta("b", "t", [], ["id"]),
            "a.u": TableMeta("a", "u", [], ["id"]), "a.nokey": TableMeta("a", "nokey", [], [])}
    assert resolve(["a.t", "u", "a.t"], meta) == (["a.t", "a.u"], [])
    assert resolve(None, meta) == (["a.t", "a.u", "b.t"], [])
    _, problems = resolve(["t", "nope", "a.nokey"], meta)
    assert ["ambiguous" in problems[0], "not captured" in problems[1],
            "no primary key" in problems[2]] == [True, True, True]
