"""sql_poll fault cases on real servers: out-of-order commits, a crash between the diff
state write and the outbox commit, a lost state file, exact types and time zones, and
the source database going away.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from cdc_bridge.kernel.errors import SourceUnavailable
from tests import test_sql_poll_support
from tests.services.postgres import PostgresServer
from tests.test_sql_poll_support import SourceDb, adapter_config, after_ids, ops_by_id, run_adapter

source_db = test_sql_poll_support.source_db  # the fixture
T0 = dt.datetime(2024, 5, 1, 10, 0, 0, 500000)


def _table(db: SourceDb, name: str) -> sa.Table:
    md = sa.MetaData()
    t = sa.Table(name, md,
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("note", sa.String(40)),
                 sa.Column("updated_at", test_sql_poll_support.ts_type()))
    md.create_all(db.engine)
    return t


@pytest.mark.parametrize("lag", ["30s", "0s"])
@pytest.mark.parametrize("mode", ["incrementing", "timestamp+incrementing"])
async def test_out_of_order_commit_is_captured(source_db: SourceDb, tmp_path: Path, mode: str,
                                               lag: str):
    """tx A inserts id 5 (earlier timestamp) and commits only after tx B's id 6 was
    polled. With a look-back window it is captured; with none (Kafka Connect JDBC's
    behaviour) it is lost, which shows the test can tell the difference."""
    if source_db.backend == "sqlite":
        pytest.skip("SQLite has one writer at a time: no concurrent transactions")
    t = _table(source_db, "invoices")
    source_db.exec(sa.insert(t).values(
        [{"id": i, "note": "old", "updated_at": T0} for i in range(1, 5)]))
    spec = {"name": "invoices", "mode": mode, "incrementing_column": "id"}
    if mode != "incrementing":
        spec["timestamp_column"] = "updated_at"
    cfg = adapter_config(source_db.url, [spec], lag_window=lag)
    conn_a = source_db.engine.connect()
    tx_a = conn_a.begin()
    conn_a.execute(sa.insert(t).values(id=5, note="A", updated_at=T0 + dt.timedelta(seconds=1)))
    source_db.exec(sa.insert(t).values(id=6, note="B", updated_at=T0 + dt.timedelta(seconds=2)))
    run = await run_adapter(cfg, tmp_path, None, lambda r: 6 in after_ids(r.events))
    assert 5 not in after_ids(run.events)
    tx_a.commit()
    conn_a.close()
    source_db.exec(sa.insert(t).values(id=7, note="C", updated_at=T0 + dt.timedelta(seconds=3)))
    run2 = await run_adapter(cfg, tmp_path, run.checkpoint,
                             lambda r: 7 in after_ids(r.events), settle_s=0.5)
    ids = after_ids(run.events) + after_ids(run2.events)
    if lag == "0s":
        assert 5 not in ids  # the defect the window exists for
    else:
        assert sorted(ids) == [1, 2, 3, 4, 5, 6, 7]  # captured, and nothing twice
        assert len(set(e.id for e in run.events + run2.events)) == 7


async def test_diff_crash_between_state_and_outbox_commit(source_db: SourceDb, tmp_path: Path):
    t = _table(source_db, "customers")
    source_db.exec(sa.insert(t).values(
        [{"id": i, "note": f"n{i}", "updated_at": T0} for i in range(1, 31)]))
    cfg = adapter_config(source_db.url, [{"name": "customers", "mode": "diff", "batch_size": 5,
                                          "poll_interval": "50ms"}])
    # stop exactly at the end of pass 1, so pass 2's steps line up with the ids below
    first = await run_adapter(
        cfg, tmp_path, None, settle_s=0,
        until=lambda r: (r.checkpoint or {}).get("tables", {}).get("customers", {}).get(
            "phase") == "idle")
    assert sorted(after_ids(first.events)) == list(range(1, 31))
    source_db.exec(sa.update(t).where(t.c.id.in_([3, 12, 27])).values(note="changed"),
                   sa.delete(t).where(t.c.id.in_([8, 29])),
                   sa.insert(t).values(id=31, note="new", updated_at=T0))
    # pass 2: two steps committed (ids 1-10) ...
    part = await run_adapter(cfg, tmp_path, first.checkpoint, lambda r: False, max_batches=2)
    committed = part.checkpoint
    assert committed is not None and committed["tables"]["customers"]["phase"] == "scan"
    # ... the third step's state is written, then the bridge dies before the outbox commit
    lost = await run_adapter(cfg, tmp_path, committed, lambda r: False, max_batches=1)
    assert ops_by_id(lost.events) == [(12, "u")]
    # restart from the committed checkpoint: the step is redone with the same event ids
    rest = await run_adapter(
        cfg, tmp_path, committed,
        lambda r: (r.checkpoint or {})["tables"]["customers"]["phase"] == "idle")
    assert lost.events[0].id in {e.id for e in rest.events}
    changes = part.events + rest.events
    assert sorted(ops_by_id(changes)) == [(3, "u"), (8, "d"), (12, "u"), (27, "u"),
                                          (29, "d"), (31, "c")]
    assert len({e.id for e in changes}) == len(changes)


async def test_diff_state_file_lost_resnapshots(source_db: SourceDb, tmp_path: Path):
    t = _table(source_db, "customers")
    source_db.exec(sa.insert(t).values(
        [{"id": i, "note": "x", "updated_at": T0} for i in range(1, 6)]))
    cfg = adapter_config(source_db.url, [{"name": "customers", "mode": "diff"}])
    first = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 5)
    shutil.rmtree(tmp_path / "sql_poll")
    again = await run_adapter(cfg, tmp_path, first.checkpoint, lambda r: len(r.events) >= 5)
    assert sorted(ops_by_id(again.events)) == [(i, "r") for i in range(1, 6)]
    assert {e.id for e in again.events}.isdisjoint({e.id for e in first.events})


async def test_exact_types_and_time_zones(source_db: SourceDb, tmp_path: Path):
    """Decimals exact, microseconds kept, aware timestamps in UTC, binary as base64."""
    if source_db.backend == "sqlite":
        pytest.skip("SQLite has no such column types")
    if source_db.backend == "postgres":
        ddl = ("CREATE TABLE typed (id int PRIMARY KEY, n numeric(30,10), naive timestamp(6), "
               "aware timestamptz, d date, b bytea, f float8, g float8)")
        ins = ("INSERT INTO typed VALUES (1, 12345678901234567890.0123456789, "
               "'2024-05-01 12:00:00.000001', '2024-05-01 12:00:00.5+02', '2024-02-29', "
               "'\\x00ff10', 'NaN', '-Infinity')")
        setup = "SET TIME ZONE 'Asia/Tokyo'"
    else:
        ddl = ("CREATE TABLE typed (id int PRIMARY KEY, n decimal(30,10), naive datetime(6), "
               "aware timestamp(6) NULL, d date, b varbinary(8), f double, g double)")
        ins = ("INSERT INTO typed VALUES (1, 12345678901234567890.0123456789, "
               "'2024-05-01 12:00:00.000001', '2024-05-01 12:00:00.5', '2024-02-29', "
               "x'00ff10', 1.5, -0.25)")
        setup = "SET time_zone = '+02:00'"
    with source_db.engine.begin() as c:
        c.execute(sa.text(ddl))
        c.execute(sa.text(setup))
        c.execute(sa.text(ins))
    cfg = adapter_config(source_db.url, [{"name": "typed", "mode": "timestamp",
                                          "timestamp_column": "aware"}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 1)
    data = run.events[0].to_cloudevent()["data"]["after"]
    encoded = test_sql_poll_support.decode(run.events[0])["data"]["after"]
    assert encoded["n"] == "12345678901234567890.0123456789"
    assert encoded["naive"] == "2024-05-01T12:00:00.000001"
    assert encoded["d"] == "2024-02-29"
    assert encoded["b"] == "AP8Q"
    assert str(data["aware"]).startswith("2024-05-01")
    if source_db.backend == "postgres":  # an instant: in UTC, written with Z as everywhere
        assert encoded["aware"] == "2024-05-01T10:00:00.500000Z"
        assert (encoded["f"], encoded["g"]) == ("NaN", "-Infinity")  # never null
    else:  # MariaDB TIMESTAMP: UTC, the driver gives it without a zone
        assert encoded["aware"] == "2024-05-01T10:00:00.500000"
        assert (encoded["f"], encoded["g"]) == (1.5, -0.25)
    # the aware cursor survives the checkpoint: a later row is read once, the first not again
    with source_db.engine.begin() as c:
        c.execute(sa.text(setup))
        c.execute(sa.text(ins.replace("(1,", "(2,").replace("12:00:00.5", "12:00:00.500001")))
    run2 = await run_adapter(cfg, tmp_path, run.checkpoint, lambda r: len(r.events) >= 1,
                             settle_s=0.5)
    assert after_ids(run2.events) == [2]


async def test_source_down_is_retryable_and_resumes(fresh_postgres: PostgresServer,
                                                    tmp_path: Path):
    admin = sa.create_engine(fresh_postgres.dsn.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as c:
        c.execute(sa.text("CREATE TABLE inv (id int PRIMARY KEY, note text)"))
        c.execute(sa.text("INSERT INTO inv SELECT g, 'x' FROM generate_series(1, 20) g"))
    admin.dispose()
    url = fresh_postgres.dsn.replace("postgresql://", "postgresql+psycopg://")
    cfg = adapter_config(url, [{"name": "inv", "mode": "incrementing", "batch_size": 5}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 20)
    fresh_postgres.stop("immediate")
    with pytest.raises(SourceUnavailable, match=r"unavailable|failed"):
        await run_adapter(cfg, tmp_path, run.checkpoint, lambda r: False, timeout_s=20)
    fresh_postgres.start()
    admin = sa.create_engine(url)
    with admin.begin() as c:
        c.execute(sa.text("INSERT INTO inv SELECT g, 'y' FROM generate_series(21, 25) g"))
    admin.dispose()
    run2 = await run_adapter(cfg, tmp_path, run.checkpoint, lambda r: len(r.events) >= 5)
    assert after_ids(run2.events) == [21, 22, 23, 24, 25]


