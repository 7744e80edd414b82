"""sql_poll: undecodable text is dead-lettered, not retried forever; tables named with dots.

Real SQLite files (TEXT holding bytes that are not UTF-8) and a real PostgreSQL
``SQL_ASCII`` database (which stores any byte, and fails a UTF-8 client's read with
SQLSTATE 22021), the adapter run in-process like the daemon runs it. Every mode: the
bad row becomes a dead letter with its reason, table, key and column, the rows around
it flow, and later polls and passes do not report it again. An undecodable *key* is a
fatal, clear ``DecodeError`` instead of a stall. Also: the ``schema`` key for a table
whose own name contains a dot, and the look-back window's checkpoint forms.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from cdc_bridge.adapters.contract import ChangeBatch
from cdc_bridge.adapters.sql_poll.window import Window
from cdc_bridge.kernel.errors import BridgeError, DecodeError
from cdc_bridge.kernel.events import DeadLetter
from tests.test_sql_poll_support import Run, adapter_config, after_ids, run_adapter

BAD = "CAST(X'66FF6FC328' AS TEXT)"  # "f\xffo\xc3(": not UTF-8


def dead(run: Run) -> list[DeadLetter]:
    return [d for b in run.batches for d in b.dead_letters]


def sqlite_db(tmp_path: Path, ddl: str, rows: list[str]) -> str:
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.execute(ddl)
        for values in rows:
            conn.execute(f"INSERT INTO t VALUES ({values})")
    return f"sqlite:///{db}"


def sqlite_exec(url: str, *sql: str) -> None:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        for s in sql:
            conn.execute(s)


@pytest.mark.parametrize("mode", ["incrementing", "timestamp", "timestamp+incrementing"])
async def test_cursor_modes_dead_letter_bad_rows_and_keep_flowing(tmp_path: Path,
                                                                  mode: str) -> None:
    rows = [f"{i}, {BAD if i in (5, 6) else repr(f'n{i}')}, '2024-01-01 00:00:{i:02d}'"
            for i in range(1, 13)]
    url = sqlite_db(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, ts TEXT)",
                    rows)
    spec: dict[str, Any] = {"name": "t", "mode": mode, "batch_size": 4}
    if mode != "incrementing":
        spec["timestamp_column"] = "ts"
    if mode == "timestamp+incrementing":
        spec["incrementing_column"] = "id"
    cfg = adapter_config(url, [spec])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 10)
    assert sorted(after_ids(run.events)) == [i for i in range(1, 13) if i not in (5, 6)]
    letters = dead(run)
    assert sorted(orjson.loads(d.payload)["key"]["id"] for d in letters) == [5, 6]
    for d in letters:
        hdrs = d.headers()
        assert "column(s) note cannot be decoded" in hdrs["Cdc-Reason"]
        assert "Could not decode to UTF-8" in hdrs["Cdc-Reason"]
        assert hdrs["Cdc-Table"] == "t" and hdrs["Cdc-Column"] == "note"
        body = orjson.loads(d.payload)
        assert body["columns"] == ["note"] and set(body["row"]) == {"id", "ts"}
    key5 = next(d for d in letters if orjson.loads(d.payload)["key"] == {"id": 5})
    assert key5.headers()["Cdc-Key"] == '{"id":5}'
    if mode == "incrementing":
        assert key5.position == "t:5"
    else:
        assert key5.position.startswith('t:{"id":5}@2024-01-01 00:00:05')

    # later polls (the look-back re-reads the bad rows) and a restart: no repeats
    sqlite_exec(url, "INSERT INTO t VALUES (13, 'n13', '2024-01-01 00:00:13')")
    run2 = await run_adapter(cfg, tmp_path, run.checkpoint, lambda r: len(r.events) >= 1,
                             settle_s=0.5)
    assert after_ids(run2.events) == [13] and not dead(run2)


async def test_page_of_only_bad_rows_moves_on(tmp_path: Path) -> None:
    """A whole page that fails must not stall: every row in it is set aside."""
    rows = [f"{i}, {BAD}" for i in range(1, 6)] + ["6, 'fine'"]
    url = sqlite_db(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT)", rows)
    cfg = adapter_config(url, [{"name": "t", "mode": "incrementing", "batch_size": 5}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 1)
    assert after_ids(run.events) == [6]
    assert sorted(d.position for d in dead(run)) == [f"t:{i}" for i in range(1, 6)]


async def test_diff_mode_reports_a_bad_row_once_and_never_as_deleted(tmp_path: Path) -> None:
    url = sqlite_db(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT)",
                    ["1, 'a'", f"2, {BAD}", "3, 'c'"])
    cfg = adapter_config(url, [{"name": "t", "mode": "diff", "batch_size": 2}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 2)
    assert sorted(after_ids(run.events)) == [1, 3] and {e.op for e in run.events} == {"r"}
    assert [d.position for d in dead(run)] == ['t:1:{"id":2}']

    # the next passes: the same broken row is not reported again, nor taken as deleted
    sqlite_exec(url, "UPDATE t SET note = 'c2' WHERE id = 3")
    run2 = await run_adapter(cfg, tmp_path, run.checkpoint, lambda r: len(r.events) >= 1,
                             settle_s=0.5)
    assert [(e.op, e.key) for e in run2.events] == [("u", {"id": 3})] and not dead(run2)

    # fixed: a u with before null (the state had no image of it); deleted later: a d
    sqlite_exec(url, "UPDATE t SET note = 'fixed' WHERE id = 2")
    run3 = await run_adapter(cfg, tmp_path, run2.checkpoint, lambda r: len(r.events) >= 1)
    assert [(e.op, e.key, e.before) for e in run3.events] == [("u", {"id": 2}, None)]
    assert run3.events[0].after == {"id": 2, "note": "fixed"}


async def test_resnapshot_dead_letters_bad_rows(tmp_path: Path) -> None:
    from cdc_bridge.adapters.contract import AdapterContext
    from cdc_bridge.adapters.sql_poll.adapter import SqlPollAdapter

    url = sqlite_db(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT)",
                    ["1, 'a'", f"2, {BAD}", "3, 'c'"])
    cfg = adapter_config(url, [{"name": "t", "mode": "incrementing", "snapshot": "none"}])
    adapter = SqlPollAdapter(cfg, AdapterContext(state_dir=tmp_path))
    gen = adapter.changes(None)
    batches: list[ChangeBatch] = []
    try:
        batches.append(await gen.__anext__())  # the first poll: nothing (snapshot none)
        await adapter.request_snapshot(["t"])
        while sum(len(b) for b in batches) < 3:
            batches.append(await gen.__anext__())
    finally:
        await gen.aclose()  # type: ignore[attr-defined]
        await adapter.close()
    events = [e for b in batches for e in b.events]
    letters = [d for b in batches for d in b.dead_letters]
    assert sorted(after_ids(events)) == [1, 3] and {e.op for e in events} == {"r"}
    assert [d.position for d in letters] == ['t:resnap1:{"id":2}']


async def test_undecodable_key_is_a_clear_fatal_error(tmp_path: Path) -> None:
    url = sqlite_db(tmp_path, "CREATE TABLE t (code TEXT PRIMARY KEY, note TEXT)",
                    ["'a', 'x'", f"{BAD}, 'y'"])
    cfg = adapter_config(url, [{"name": "t", "mode": "diff"}])
    with pytest.raises(DecodeError, match="key or cursor value cannot be decoded"):
        await run_adapter(cfg, tmp_path, None, lambda r: False, timeout_s=10)


async def test_postgres_sql_ascii_bad_bytes_are_dead_lettered(tmp_path: Path,
                                                              postgres_server: Any) -> None:
    import psycopg

    dbname = f"sqlascii_{tmp_path.name[-12:].lower()}".replace("-", "_")
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname} TEMPLATE template0 ENCODING 'SQL_ASCII' "
                     "LC_COLLATE 'C' LC_CTYPE 'C'")
    with psycopg.connect(postgres_server.dsn_for(dbname), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, note text, qty int)")
        for i in range(1, 9):
            note = "convert_from('\\x66ff6f'::bytea, 'SQL_ASCII')" if i == 4 else f"'n{i}'"
            conn.execute(f"INSERT INTO t VALUES ({i}, {note}, {i * 10})")
    url = postgres_server.dsn_for(dbname).replace("postgresql://", "postgresql+psycopg://")
    cfg = adapter_config(f"{url}?client_encoding=utf8",
                         [{"name": "t", "mode": "incrementing", "batch_size": 3}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 7)
    assert after_ids(run.events) == [1, 2, 3, 5, 6, 7, 8]
    [letter] = dead(run)
    assert letter.position == "t:4"
    assert "invalid byte sequence" in letter.reason and "note" in letter.reason
    assert orjson.loads(letter.payload)["row"] == {"id": 4, "qty": 40}


async def test_schema_key_takes_a_dotted_table_name_whole(tmp_path: Path) -> None:
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.execute('CREATE TABLE "orders.2023" (id INTEGER PRIMARY KEY, v TEXT)')
        conn.execute("INSERT INTO \"orders.2023\" VALUES (1, 'a'), (2, 'b')")
    cfg = adapter_config(f"sqlite:///{db}", [
        {"name": "orders.2023", "schema": "main", "mode": "incrementing"}])
    run = await run_adapter(cfg, tmp_path, None, lambda r: len(r.events) >= 2)
    assert after_ids(run.events) == [1, 2]
    ev = run.events[0]
    assert (ev.schema, ev.table, ev.position) == ("main", "orders.2023", "main.orders.2023:1")
    assert ev.subject("cdc") == "cdc.erp.main.orders_2023.r"
    assert set(run.checkpoint["tables"]) == {"main.orders.2023"}  # type: ignore[index]

    # without ``schema`` the name is split at the last dot: schema "orders", table "2023"
    bad = adapter_config(f"sqlite:///{db}", [{"name": "orders.2023", "mode": "incrementing"}])
    with pytest.raises(BridgeError, match=r"orders\.2023"):
        await run_adapter(bad, tmp_path / "x", None, lambda r: False, timeout_s=10)


def test_schema_key_validation() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'schema' is not for mode query"):
        adapter_config("sqlite:///x.db", [{"name": "q", "schema": "s", "mode": "query",
                                           "query": "SELECT 1 AS id", "query_mode": "diff",
                                           "key_columns": ["id"]}])
    with pytest.raises(ValidationError, match="duplicate table name"):
        adapter_config("sqlite:///x.db", [{"name": "b.c", "schema": "a"}, {"name": "a.b.c"}])
    ok = adapter_config("sqlite:///x.db", [{"name": "t", "schema": "a"},
                                           {"name": "t", "schema": "b"}])
    assert [t.ident for t in ok.tables] == ["a.t", "b.t"]


def test_window_checkpoint_forms() -> None:
    w = Window()
    for i in range(1, 8):
        w.emitted((i,), f"f{i}", 5)  # over the bound: shortened to 3 (3/4 of 5)
    w.note_poll(1_000)
    data = orjson.loads(orjson.dumps(w.to_json()))
    assert isinstance(data["seen"], str)
    back = Window.from_json(data)
    assert back.seen == w.seen and back.base == w.base and back.samples == w.samples
    assert orjson.dumps(back.to_json()) == orjson.dumps(w.to_json())
    # a checkpoint written before (``seen`` as a list of pairs) still loads
    old = dict(data, seen=[[fp, list(c)] for fp, c in w.seen.items()])
    assert Window.from_json(old).seen == w.seen
