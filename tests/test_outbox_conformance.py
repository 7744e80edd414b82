"""The outbox store contract, run against every backend: SQLite and a real PostgreSQL.

Each test gets an empty store: a fresh SQLite file, or a fresh schema
(``?schema=...``) in the session's PostgreSQL.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cdc_bridge.outbox.base import OutboxMessage, OutboxStore, SchemaState
from cdc_bridge.outbox.factory import open_store
from tests.services.postgres import PostgresServer

Opener = Callable[[], OutboxStore]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """A function opening (and re-opening) the same empty store."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'outbox.db'}"
    else:
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        url = f"{pg.dsn}?schema=t_{uuid.uuid4().hex[:12]}"
    opened: list[OutboxStore] = []

    def open_() -> OutboxStore:
        store = open_store(url)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def msgs(start: int, n: int, subject: str = "cdc.erp._.t.c") -> list[OutboxMessage]:
    return [OutboxMessage(f"id-{i}", subject, f"body-{i}".encode(),
                          {"Cdc-K": str(i)} if i % 2 else None, 1_000 + i)
            for i in range(start, start + n)]


def test_append_returns_last_seq_and_pending_keeps_order(opener: Opener) -> None:
    store = opener()
    assert store.append("a", msgs(0, 3), {"pos": 3}) == 3
    assert store.append("b", msgs(3, 2), None) == 5
    rows = store.pending(0, 100)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert [r.message.msg_id for r in rows] == [f"id-{i}" for i in range(5)]
    assert rows[1].message.headers == {"Cdc-K": "1"}
    assert rows[0].message.headers is None
    assert rows[2].message.payload == b"body-2"
    assert rows[4].message.created_ms == 1_004
    assert [r.seq for r in store.pending(2, 2)] == [3, 4]
    assert store.pending(5, 10) == []


def test_checkpoints_commit_with_the_batch(opener: Opener) -> None:
    store = opener()
    assert store.checkpoint("a") is None
    store.append("a", msgs(0, 1), {"pos": 1, "lsn": "0/16B3748"})
    store.append("b", [], {"file": "x.csv", "line": 7})
    store.append("a", msgs(1, 1), None)  # no checkpoint: the previous one stays
    assert store.checkpoint("a") == {"pos": 1, "lsn": "0/16B3748"}
    assert store.checkpoints() == {"a": {"pos": 1, "lsn": "0/16B3748"},
                                   "b": {"file": "x.csv", "line": 7}}
    # reset-source: the checkpoint goes, the pending rows stay to be published
    assert store.forget("a") is True and store.forget("a") is False
    assert store.checkpoints() == {"b": {"file": "x.csv", "line": 7}}
    assert len(store.pending(0, 10)) == 2


def test_failure_mid_append_leaves_neither_messages_nor_checkpoint(opener: Opener) -> None:
    store = opener()
    store.append("a", msgs(0, 2), {"pos": 2})
    batch = msgs(2, 5)
    broken = OutboxMessage("id-bad", "cdc.erp._.t.c", None, None, 1)  # type: ignore[arg-type]
    batch.insert(3, broken)  # rows before it are written first, then the insert fails
    with pytest.raises(Exception):  # noqa: B017 - the backend's own integrity error
        store.append("a", batch, {"pos": 7})
    assert store.checkpoint("a") == {"pos": 2}
    assert [r.message.msg_id for r in store.pending(0, 100)] == ["id-0", "id-1"]
    # the failed append gave its numbers back: seq stays gap-free
    assert store.append("a", msgs(2, 1), {"pos": 3}) == 3
    assert store.stats().pending == 3


def test_remove_deletes_a_prefix_and_seq_never_goes_back(opener: Opener) -> None:
    store = opener()
    store.append("a", msgs(0, 10), None)
    assert store.remove(4) == 4
    assert [r.seq for r in store.pending(0, 100)] == [5, 6, 7, 8, 9, 10]
    assert store.remove(10) == 6
    assert store.pending(0, 100) == []
    assert store.append("a", msgs(10, 1), None) == 11  # not reused after deletes
    store.close()
    reopened = opener()
    assert reopened.append("a", msgs(11, 1), None) == 12


def test_stats_report_pending_oldest_and_size(opener: Opener) -> None:
    store = opener()
    empty = store.stats()
    assert (empty.pending, empty.oldest_pending_ms) == (0, None)
    store.append("a", msgs(0, 50), None)
    store.remove(20)
    st = store.stats()
    assert st.pending == 30
    assert st.oldest_pending_ms == 1_020
    assert (st.first_seq, st.last_seq) == (21, 50)
    assert st.size_bytes is not None and st.size_bytes > 0


def test_store_id_is_stable_across_reopen(opener: Opener) -> None:
    first = opener()
    store_id = first.store_id
    uuid.UUID(store_id)
    first.close()
    assert opener().store_id == store_id


def test_concurrent_appends_are_never_seen_out_of_order(opener: Opener) -> None:
    """Two writers and a relay-like reader: the reader never sees a hole filled later."""
    store = opener()
    per_writer, batch = 1500, 50
    errors: list[BaseException] = []
    done = threading.Event()

    def writer(name: str) -> None:
        try:
            for i in range(0, per_writer, batch):
                store.append(name, msgs(i, batch, f"cdc.{name}._.t.c"), {"pos": i})
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    seen: list[int] = []

    def reader() -> None:
        try:
            cursor = 0
            while True:
                finished = done.is_set()
                rows = store.pending(cursor, 200)
                for r in rows:
                    seen.append(r.seq)
                if rows:
                    cursor = rows[-1].seq
                    store.remove(cursor)
                elif finished:
                    return
                else:
                    time.sleep(0.001)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("w1", "w2")]
    rt = threading.Thread(target=reader)
    rt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    rt.join(60)
    assert not errors, errors
    assert seen == list(range(1, 2 * per_writer + 1))
    assert store.stats().pending == 0
    assert set(store.checkpoints()) == {"w1", "w2"}


def test_sqlite_compact_gives_space_back(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'outbox.db'}")
    try:
        big = [OutboxMessage(f"id-{i}", "cdc.a._.t.c", b"x" * 4000, None, 1) for i in range(3000)]
        store.append("a", big, None)
        grown = store.stats().size_bytes or 0
        assert grown > 10_000_000
        store.remove(3000)
        store.compact()
        shrunk = store.stats().size_bytes or 0
        assert shrunk < grown / 10, (grown, shrunk)
    finally:
        store.close()


def _state(table: str, version: int, paused: str | None = None) -> SchemaState:
    return SchemaState(table, version, f"fp{version}", {"version": version, "table": table},
                       paused)


def test_schema_states_and_held_rows_commit_with_the_batch(opener: Opener) -> None:
    store = opener()
    store.append("a", msgs(0, 2), {"pos": 2}, [_state("public.t", 1)])
    store.append("a", msgs(2, 1), {"pos": 5}, [_state("public.t", 2, "breaking")],
                 [("public.t", m) for m in msgs(10, 3)])
    store.append("b", msgs(3, 1), None, [_state("_.u", 1)])
    states = {(a, st.table): st for a, st in store.schema_states()}
    assert states[("a", "public.t")].version == 2
    assert states[("a", "public.t")].paused == "breaking"
    assert states[("a", "public.t")].entry == {"version": 2, "table": "public.t"}
    assert [st.table for _, st in store.schema_states("b")] == ["_.u"]
    assert store.held_counts() == {("a", "public.t"): 3}
    assert [r.message.msg_id for r in store.pending(0, 100)] == [f"id-{i}" for i in range(4)]
    # a failed append stores neither its schema state nor its held rows
    with pytest.raises(Exception):  # noqa: B017 (each backend raises its own)
        store.append("a", msgs(20, 1), {"pos": 9}, [_state("public.t", 3)],
                     [("public.t", OutboxMessage("x", "s", None, None, 1))])  # type: ignore[arg-type]
    assert {st.version for _, st in store.schema_states("a")} == {2}
    assert store.checkpoint("a") == {"pos": 5} and store.stats().pending == 4
    assert store.held_counts() == {("a", "public.t"): 3}


def test_release_makes_held_rows_pending_after_the_rest_in_order(opener: Opener) -> None:
    store = opener()
    store.append("a", msgs(0, 2), None, [_state("public.t", 2, "breaking")],
                 [("public.t", m) for m in msgs(10, 3)])
    store.append("a", msgs(2, 2), None, (), [("public.t", m) for m in msgs(13, 1)])
    store.remove(1)
    assert store.release("a", "public.t") == 4
    rows = store.pending(0, 100)
    assert [r.message.msg_id for r in rows] == ["id-1", "id-2", "id-3", "id-10", "id-11",
                                                "id-12", "id-13"]
    assert [r.seq for r in rows] == [2, 3, 4, 5, 6, 7, 8]
    assert rows[4].message.headers == {"Cdc-K": "11"}
    assert store.held_counts() == {}
    assert [st.paused for _, st in store.schema_states("a")] == [None]
    assert store.append("a", msgs(30, 1), None) == 9  # numbering goes on without a gap
    assert store.release("a", "public.t") == 0
    with pytest.raises(KeyError):
        store.release("a", "public.nope")
    reopened = opener()
    assert [st.version for _, st in reopened.schema_states("a")] == [2]


def test_rows_held_for_a_table_released_meanwhile_become_pending(opener: Opener) -> None:
    store = opener()
    store.append("a", [], None, [_state("public.t", 2, "breaking")],
                 [("public.t", m) for m in msgs(10, 2)])
    other = opener()  # another process accepts the table
    assert other.release("a", "public.t") == 2
    # the writer, not knowing yet, holds two more: they go to the pending rows, in order
    last = store.append("a", msgs(0, 1), {"pos": 1}, (),
                        [("public.t", m) for m in msgs(12, 2)])
    assert last == 5
    assert [r.message.msg_id for r in store.pending(0, 100)] == [
        "id-10", "id-11", "id-0", "id-12", "id-13"]
    assert store.held_counts() == {}
