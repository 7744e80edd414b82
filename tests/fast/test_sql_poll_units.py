"""Unit tests of the sql_poll pure logic: cursor encoding, look-back window, row diffing,
config validation. Real-database behaviour is in test_sql_poll_modes/faults/e2e."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cdc_bridge.adapters.sql_poll.config import SqlPollConfig
from cdc_bridge.adapters.sql_poll.diff import SourceRow, deletes, diff_chunk
from cdc_bridge.adapters.sql_poll.diff_state import Stored
from cdc_bridge.adapters.sql_poll.values import decode_cursor, encode_cursor
from cdc_bridge.adapters.sql_poll.window import Window

values = st.one_of(
    st.integers(), st.text(), st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(timezones=st.one_of(st.none(), st.just(dt.UTC))), st.dates(), st.binary())


@given(st.lists(values, min_size=1, max_size=4))
def test_cursor_round_trips_exactly_through_json(cursor: list[object]) -> None:
    back = decode_cursor(orjson.loads(orjson.dumps(encode_cursor(tuple(cursor)))))
    assert back == tuple(cursor)
    assert [type(v) for v in back or ()] == [type(v) for v in cursor]
    for a, b in zip(back or (), cursor, strict=True):
        if isinstance(a, dt.datetime):
            assert a.tzinfo == b.tzinfo and a.microsecond == b.microsecond  # type: ignore[union-attr]
        if isinstance(a, Decimal):
            assert str(a) == str(b)


def test_window_rereads_within_lag_and_forgets_after() -> None:
    w = Window()
    w.emitted((1,), "a", 100)
    w.emitted((2,), "b", 100)
    w.note_poll(1_000)
    w.advance(5_000, lag_ms=10_000)
    assert w.base is None and w.is_seen("a")  # still inside the window: re-read from start
    w.advance(12_000, lag_ms=10_000)
    assert w.base == (2,) and not w.is_seen("a") and not w.seen  # older than the lag
    back = Window.from_json(orjson.loads(orjson.dumps(w.to_json())))
    assert back.base == (2,) and back.top == (2,)


def test_window_bounded_by_max_rows() -> None:
    w = Window()
    for i in range(1, 11):
        w.emitted((i,), f"f{i}", 4)
    # over the bound (4) it drops to 3/4 of it at once: the newest 3 stay
    assert len(w.seen) <= 4 and w.is_seen("f10") and not w.is_seen("f1")
    assert w.base is not None and all(c > w.base for c in w.seen.values())


def test_window_without_lag_is_a_plain_cursor() -> None:
    w = Window()
    w.emitted((5,), None, 0)
    assert w.base == (5,) and not w.seen


def test_diff_chunk_and_deletes() -> None:
    rows = [SourceRow("1", b"h1", b"{}"), SourceRow("2", b"h2x", b"{2}"),
            SourceRow("3", b"h3", b"{3}"), SourceRow("4", b"h4", b"{4}")]
    stored = {"1": Stored(b"h1", b"{}"), "2": Stored(b"h2", b"{old}"),
              "4": Stored(None, None)}
    changes, writes = diff_chunk(rows, stored)
    assert [(c.op, c.key, c.before) for c in changes] == [
        ("u", "2", b"{old}"), ("c", "3", None), ("c", "4", None)]
    assert [w.key for w in writes] == ["2", "3", "4"]
    _, slim = diff_chunk(rows, stored, keep_images=False)
    assert all(w.image is None for w in slim)
    dels, dw = deletes([("9", Stored(b"h", b"{9}"))])
    assert dels[0].op == "d" and dels[0].before == b"{9}" and dw[0].hash is None


@given(st.dictionaries(st.integers(0, 30), st.binary(min_size=1, max_size=2)),
       st.dictionaries(st.integers(0, 30), st.binary(min_size=1, max_size=2)))
def test_diff_chunk_matches_a_set_comparison(old: dict[int, bytes], new: dict[int, bytes]):
    rows = [SourceRow(str(k), h, h) for k, h in sorted(new.items())]
    stored = {str(k): Stored(h, h) for k, h in old.items()}
    changes, _ = diff_chunk(rows, stored)
    ops = {(c.op, int(c.key)) for c in changes}
    assert ops == ({("c", k) for k in new if k not in old}
                   | {("u", k) for k in new if k in old and old[k] != new[k]})


def _cfg(**table: object) -> SqlPollConfig:
    return SqlPollConfig.model_validate({"name": "x", "type": "sql_poll", "url": "sqlite://",
                                         "tables": [table]})


def test_config_rules() -> None:
    assert _cfg(name="t").tables[0].effective_snapshot == "initial"
    assert _cfg(name="t", mode="diff").tables[0].effective_snapshot == "initial"
    for bad, text in [
        ({"name": "t", "mode": "timestamp"}, "needs 'timestamp_column'"),
        ({"name": "t", "mode": "timestamp+incrementing", "timestamp_column": "u"},
         "needs 'incrementing_column'"),
        ({"name": "t", "mode": "query", "query": "SELECT 1"}, "needs 'query_mode'"),
        ({"name": "t", "mode": "diff", "colums": {}}, "Extra inputs"),
    ]:
        with pytest.raises(ValidationError, match=text):
            _cfg(**bad)


class _ReloadedSource:
    """Just what :meth:`CursorTable.reset_check` reads of a table source: its identity
    changes as a reload goes through DROP (gone: ``None``) and CREATE."""

    schema = None
    table_name = "inv"
    cursor_names = ["id"]
    mode = "incrementing"

    def __init__(self) -> None:
        self.now: str | None = "t1"
        self.spec = type("Spec", (), {"ident": "inv"})()

    def identity(self, conn: object) -> str | None:
        return self.now


def test_a_reload_seen_between_drop_and_create_is_still_a_reset() -> None:
    from cdc_bridge.adapters.sql_poll.cursor_mode import CursorTable

    source = _ReloadedSource()
    table = CursorTable("erp", source, batch_size=10, lag_s=0.0,  # type: ignore[arg-type]
                        max_window_rows=0, progress_interval_s=10.0)
    assert table.reset_check(None, "resnapshot") == []  # type: ignore[arg-type]
    table.started = True
    source.now = None  # between DROP TABLE and CREATE TABLE
    assert table.reset_check(None, "resnapshot") == []  # type: ignore[arg-type]
    source.now = "t2"  # created again
    events = table.reset_check(None, "resnapshot")  # type: ignore[arg-type]
    assert [e.op for e in events] == ["t"] and table.identity == "t2"
    assert table.reset_check(None, "resnapshot") == []  # type: ignore[arg-type]
