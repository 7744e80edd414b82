"""sql_poll modes against real SQLite, MariaDB and PostgreSQL, adapter run in-process.

Each test creates its own database (server backends) or file (SQLite), runs the adapter
like the daemon does (each batch's checkpoint is "committed" before the next), and
restarts it from the committed checkpoint where the test is about resuming.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from cdc_bridge.adapters.sql_poll.values import key_text
from cdc_bridge.kernel.errors import SourceSetupError
from tests import test_sql_poll_support
from tests.test_sql_poll_support import (
    SourceDb,
    adapter_config,
    after_ids,
    ops_by_id,
    run_adapter,
    ts_type,
)

source_db = test_sql_poll_support.source_db  # the fixture
T0 = dt.datetime(2024, 5, 1, 10, 0, 0, 123456)


def make_table(db: SourceDb, name: str = "invoices", pk: bool = True) -> sa.Table:
    md = sa.MetaData()
    table = sa.Table(
        name, md,
        sa.Column("id", sa.Integer, primary_key=pk, autoincrement=False, nullable=False),
        sa.Column("customer", sa.String(40)),
        sa.Column("amount", sa.Numeric(12, 2)),
        sa.Column("updated_at", ts_type()),
    )
    md.create_all(db.engine)
    return table


def rows(start: int, stop: int, ts: dt.datetime = T0) -> list[dict[str, object]]:
    return [{"id": i, "customer": f"c{i}", "amount": Decimal(f"{i}.10"), "updated_at": ts}
            for i in range(start, stop)]


async def test_incrementing_snapshot_initial_then_inserts(source_db: SourceDb, tmp_path: Path):
    t = make_table(source_db)
    source_db.exec(sa.insert(t).values(rows(1, 26)))
    cfg = adapter_config(source_db.url, [{"name": "invoices", "mode": "incrementing",
                                          "incrementing_column": "id",
                                          "snapshot": "initial", "batch_size": 7}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 25)
    assert after_ids(run.events) == list(range(1, 26))
    assert {e.op for e in run.events} == {"r"}
    ev = run.events[0]
    assert ev.position == "invoices:1" and ev.key == {"id": 1}
    assert Decimal(str(ev.after["amount"])) == Decimal("1.10")  # type: ignore[index]
    source_db.exec(sa.insert(t).values(rows(26, 31)))
    run2 = await run_adapter(cfg, tmp_path, run.checkpoint, lambda r: len(r.events) >= 5)
    assert ops_by_id(run2.events) == [(i, "c") for i in range(26, 31)]


@pytest.mark.parametrize("mode", ["timestamp", "timestamp+incrementing"])
async def test_timestamp_modes_updates_and_inserts(source_db: SourceDb, tmp_path: Path,
                                                   mode: str):
    t = make_table(source_db)
    source_db.exec(sa.insert(t).values(rows(1, 11)))
    spec = {"name": "invoices", "mode": mode, "timestamp_column": "updated_at",
            "batch_size": 4}
    if mode == "timestamp+incrementing":
        spec["incrementing_column"] = "id"
    cfg = adapter_config(source_db.url, [spec])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 10)
    assert sorted(after_ids(run.events)) == list(range(1, 11))
    assert {e.op for e in run.events} == {"r"}
    later = T0 + dt.timedelta(seconds=5, microseconds=1)
    source_db.exec(sa.update(t).where(t.c.id == 3).values(customer="changed", updated_at=later),
                   sa.insert(t).values(rows(11, 13, later)))
    run2 = await run_adapter(cfg, tmp_path, run.checkpoint, lambda r: len(r.events) >= 3)
    got = ops_by_id(run2.events)
    expect_new = "c" if mode == "timestamp+incrementing" else "u"
    assert got == [(3, "u"), (11, expect_new), (12, expect_new)]
    assert run2.events[0].after["customer"] == "changed"  # type: ignore[index]
    # timestamps keep their microseconds (SQLite: the stored text, as stored)
    stamp = str(run2.events[0].after["updated_at"])  # type: ignore[index]
    assert "05.000001" in stamp or "05.123457" in stamp


async def test_rows_sharing_one_timestamp_survive_restarts(source_db: SourceDb, tmp_path: Path):
    """50 rows with one timestamp, pages of 7, restarted after every batch."""
    t = make_table(source_db)
    source_db.exec(sa.insert(t).values(rows(1, 51)))
    cfg = adapter_config(source_db.url, [{"name": "invoices", "mode": "timestamp",
                                          "timestamp_column": "updated_at",
                                          "batch_size": 7}])
    checkpoint, seen = None, []
    for _ in range(30):
        run = await run_adapter(cfg, tmp_path, checkpoint, lambda r: False, max_batches=1,
                                timeout_s=10)
        checkpoint = run.checkpoint
        seen.extend(after_ids(run.events))
        if len(seen) >= 50:
            break
    assert seen == list(range(1, 51))  # none lost, none repeated, key order within the tick


async def test_diff_mode_inserts_updates_deletes(source_db: SourceDb, tmp_path: Path):
    t = make_table(source_db, "customers")
    source_db.exec(sa.insert(t).values(rows(1, 21)))
    cfg = adapter_config(source_db.url, [{"name": "customers", "mode": "diff",
                                          "batch_size": 6, "poll_interval": "100ms"}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 20)
    assert sorted(after_ids(run.events)) == list(range(1, 21))
    assert {e.op for e in run.events} == {"r"}
    source_db.exec(
        sa.update(t).where(t.c.id == 5).values(amount=Decimal("99.99")),
        sa.delete(t).where(t.c.id.in_([7, 20])),
        sa.insert(t).values(rows(21, 23)),
    )
    run2 = await run_adapter(cfg, tmp_path, run.checkpoint, lambda r: len(r.events) >= 5)
    got = sorted(ops_by_id(run2.events))
    assert got == [(5, "u"), (7, "d"), (20, "d"), (21, "c"), (22, "c")]
    upd = next(e for e in run2.events if e.op == "u")
    assert upd.before is not None and upd.after is not None
    assert Decimal(upd.before["amount"]) == Decimal("5.10")
    assert Decimal(upd.after["amount"]) == Decimal("99.99")
    dele = next(e for e in run2.events if e.op == "d")
    assert dele.after is None and dele.before is not None and dele.key == {"id": dele.before["id"]}
    # a further pass with no change emits nothing
    run3 = await run_adapter(cfg, tmp_path, run2.checkpoint,
                             lambda r: (r.checkpoint or {})["tables"]["customers"]["pass"] >= 4)
    assert run3.events == []


async def test_query_mode(source_db: SourceDb, tmp_path: Path):
    t = make_table(source_db)
    source_db.exec(sa.insert(t).values(rows(1, 6)))
    query = "SELECT id, customer, amount * 2 AS doubled, updated_at FROM invoices WHERE id <> 2"
    cfg = adapter_config(source_db.url, [{
        "name": "doubled", "mode": "query", "query": query, "query_mode": "timestamp",
        "timestamp_column": "updated_at", "key_columns": ["id"]}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 4)
    assert sorted(after_ids(run.events)) == [1, 3, 4, 5]
    assert Decimal(str(run.events[0].after["doubled"])) == Decimal("2.20")  # type: ignore[index]
    assert run.events[0].table == "doubled"


async def test_column_rules_exclude_and_mask(source_db: SourceDb, tmp_path: Path):
    t = make_table(source_db, "customers")
    source_db.exec(sa.insert(t).values(rows(1, 3)))
    cfg = adapter_config(source_db.url, [{
        "name": "customers", "mode": "diff",
        "columns": {"exclude": ["updated_at"], "mask": ["customer"], "mask_salt": "s"}}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 2)
    after = run.events[0].after
    assert after is not None and set(after) == {"id", "customer", "amount"}
    assert str(after["customer"]).startswith("sha256:")
    # a change only in an excluded column is no change
    source_db.exec(sa.update(t).values(updated_at=T0 + dt.timedelta(days=1)))
    run2 = await run_adapter(cfg, tmp_path, run.checkpoint,
                             lambda r: (r.checkpoint or {})["tables"]["customers"]["pass"] >= 3)
    assert run2.events == []


async def test_missing_table_and_column_are_fatal(source_db: SourceDb, tmp_path: Path):
    make_table(source_db)
    for spec, text in [
        ({"name": "nope", "mode": "diff"}, "'nope' not found"),
        ({"name": "invoices", "mode": "timestamp", "timestamp_column": "modified"},
         "no column 'modified'"),
    ]:
        cfg = adapter_config(source_db.url, [spec])
        with pytest.raises(SourceSetupError, match=text):
            await run_adapter(cfg, tmp_path, None, lambda r: False, timeout_s=5)


def test_key_text_is_stable() -> None:
    assert key_text({"b": 1, "a": "x"}) == '{"b":1,"a":"x"}'
