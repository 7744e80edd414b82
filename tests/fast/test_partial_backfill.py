"""Partial backfills (``--where``), the pure parts: checking a where, widening a run's
where per table, the checkpoint round trip, the MySQL form, the control file."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from cdc_bridge.adapters.filters.parse import parse
from cdc_bridge.adapters.filters.sql import to_mysql_sql
from cdc_bridge.adapters.mysql_binlog.position import ResnapProgress as MyProgress
from cdc_bridge.adapters.postgres.resnap_state import ResnapProgress
from cdc_bridge.adapters.snapshot_where import (
    FilterSyntaxError,
    check_where,
    covers,
    table_problem,
    widen,
)
from cdc_bridge.daemon.control import ControlDb


def test_check_where_points_at_the_problem() -> None:
    assert check_where("region = 'eu'").columns == {"region"}
    with pytest.raises(FilterSyntaxError) as bad:
        check_where("region = = 'eu'")
    assert "at column 10" in str(bad.value) and str(bad.value).endswith("\n" + " " * 13 + "^")
    with pytest.raises(FilterSyntaxError) as op:
        check_where("a = 1 and op = 'r'")
    assert op.value.column == 11 and "cannot read op" in str(op.value)
    assert table_problem(check_where("x = 1 and y = 2"), "t", ["x"]) == \
        "table t has no column 'y' (--where x = 1 and y = 2)"
    assert table_problem(check_where("x = 1"), "t", ["x"]) is None


def test_widen_and_covers() -> None:
    assert covers(None, "a = 1") and covers("a = 1", "a = 1")
    assert not covers("a = 1", None) and not covers("a = 1", "b = 2")
    assert widen("a = 1", "b = 2") == "(a = 1) or (b = 2)"
    assert widen("a = 1", None) is None and widen(None, "a = 1") is None
    assert widen("a = 1", "a = 1") == "a = 1"
    check_where(widen("a = 1 or b = 2", "c in (1, 2)") or "")  # still parses


def test_run_merges_wheres_per_table_and_restarts_a_widened_table() -> None:
    run = ResnapProgress(1, 1, tables=["s.a", "s.b"], wheres={"s.a": "x = 1", "s.b": "x = 1"})
    run.current, run.after, run.retry = "s.a", ["10"], [["3"]]
    run.merge(["s.b"], "x = 1")  # covered: nothing moves
    assert run.attempt == 1 and run.after == ["10"]
    run.merge(["s.a"], "x = 2")  # the table being read is widened: read again
    assert run.wheres["s.a"] == "(x = 1) or (x = 2)"
    assert (run.current, run.after, run.retry, run.attempt) == (None, None, [], 2)
    run.merge(["s.b"], None)  # every row: the where goes
    assert "s.b" not in run.wheres
    again = ResnapProgress.from_json(run.to_json())
    assert again == run
    run.table_done("s.a")
    assert "s.a" not in run.wheres
    run.table_done("s.b")
    assert run.finished and run.wheres == {}
    run.merge(["s.a"], "y = 1")  # a done table comes back with the new where only
    assert run.wheres == {"s.a": "y = 1"}
    assert "wheres" not in ResnapProgress(1, 1).to_json()  # older checkpoints unchanged


def test_mysql_progress_keeps_its_wheres() -> None:
    run = MyProgress(1, 1, "f.000001:4", tables=["d.t"], wheres={"d.t": "x = 1"})
    run.current, run.after = "d.t", [5]
    run.merge(["d.t"], None)
    assert run.wheres == {} and run.after is None and run.attempt == 2
    assert MyProgress.from_json(run.to_json()) == run


def test_mysql_condition_has_parameters() -> None:
    text, params = to_mysql_sql(parse('"a`" = \'x\'\'y\' and b in (1, 2.5) or not c is null'))
    assert text == "((`a``` = %s) AND (`b` IN (%s, %s))) OR (NOT (`c` IS NULL))"
    assert params == ["x'y", 1, Decimal("2.5")]


def test_control_file_carries_the_where_and_upgrades_old_files(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    with sqlite3.connect(path) as conn:  # a control file from before --where
        conn.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT "
                     "NOT NULL, adapter TEXT NOT NULL, tables TEXT, status TEXT NOT NULL "
                     "DEFAULT 'pending', events INTEGER NOT NULL DEFAULT 0, message TEXT, "
                     "created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL)")
        conn.execute("INSERT INTO requests(kind, adapter, created_ms, updated_ms) "
                     "VALUES ('snapshot', 'old', 1, 1)")
    control = ControlDb(path)
    ControlDb(path)  # opening it twice is harmless
    rid = control.submit("snapshot", "shop", ["kv"], "region = 'eu'")
    req = control.get(rid)
    assert req is not None and req.where == "region = 'eu'" and req.tables == ["kv"]
    claimed = control.claim_pending()
    assert [(r.adapter, r.where) for r in claimed] == [("old", None), ("shop", "region = 'eu'")]
