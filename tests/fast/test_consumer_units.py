"""Pure logic of the consumer library: per-key queues, the order index, pruning cutoffs,
the seen-stores' transactions and pruning, order keys, dead-letter subjects."""

from __future__ import annotations

import sqlite3

import pytest

from cdc_bridge.cli.dlq import redrive_headers
from cdc_bridge.client.consumer import ConsumerSettings, decode_event, order_key_of
from cdc_bridge.client.ordering import (
    KeyIndex,
    KeyQueues,
    Retention,
    seen_cutoff_ms,
    seen_retention,
)
from cdc_bridge.client.seen import MemorySeenStore, SqliteSeenStore
from cdc_bridge.client.stats import Histogram
from cdc_bridge.kernel.events import ChangeEvent, dead_letter_stream, dead_letter_subject


def test_key_queues_take_the_lowest_sequence_first_and_replace_redeliveries() -> None:
    q: KeyQueues[str] = KeyQueues()
    assert q.add("a", 5, "a5") is True  # first of its key: needs a worker
    assert q.add("a", 9, "a9") is False
    assert q.add("b", 6, "b6") is True
    assert q.head("a") == (5, "a5")
    q.remove("a", 5)
    assert q.add("a", 3, "a3 redelivered") is False  # an earlier one comes back
    assert q.head("a") == (3, "a3 redelivered")
    assert q.add("a", 9, "a9 again") is False and q.depth("a") == 2
    assert q.held == 3 and q.keys == 2 and q.deepest() == 2
    q.remove("a", 9)
    assert q.head("a") == (3, "a3 redelivered")
    q.remove("a", 3)
    assert q.head("a") is None and q.keys == 1
    assert q.add("a", 10, "a10") is True


def test_key_index_finds_the_predecessor_and_the_gaps() -> None:
    idx = KeyIndex(floor=10)
    idx.record(11, "k")
    idx.record(14, "j")  # 12..13 taken by another instance
    idx.record(17, "k")  # 15..16 too
    assert idx.gaps_between(10, 17) == [(12, 13), (15, 16)]
    assert idx.predecessor("k", 17, 10) == 11
    assert idx.predecessor("k", 17, 11) is None  # the key's position covers 11
    idx.record(13, "k")  # read from the stream
    idx.known_empty(12, 13)
    idx.known_empty(15, 16)
    assert idx.gaps_between(10, 17) == []
    assert idx.predecessor("k", 17, 10) == 13
    assert idx.predecessor("j", 17, 10) == 14
    idx.advance_floor(13)
    assert idx.predecessor("k", 17, 0) is None and len(idx) == 2
    idx.record(5, "k")  # below the floor: done already
    assert idx.predecessor("k", 17, 0) is None


def test_retention_follows_the_stream_unless_set() -> None:
    assert seen_retention(None, 3600.0, 120.0) == Retention(3720.0, "stream max_age")
    assert seen_retention(None, 0.0).seconds is None
    assert seen_retention(60.0, 3600.0).seconds == 60.0
    assert seen_retention(0.0, 3600.0).seconds is None  # 0: never prune
    assert seen_cutoff_ms(1_000_000, Retention(10.0, "x")) == 990_000
    assert seen_cutoff_ms(1_000_000, Retention(None, "x")) is None


async def test_sqlite_store_commits_handler_writes_with_the_mark_or_neither() -> None:
    conn = sqlite3.connect(":memory:")
    store = SqliteSeenStore(conn, "svc")
    conn.execute("CREATE TABLE effects (v INTEGER)")
    conn.commit()
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            conn.execute("INSERT INTO effects VALUES (1)")
            await tx.done("CDC/svc", "k", 4, "id-1")
            raise RuntimeError("handler failed")
    assert conn.execute("SELECT COUNT(*) FROM effects").fetchone()[0] == 0
    assert await store.last_seq("CDC/svc", "k") == 0
    async with store.transaction() as tx:
        assert await tx.last_seq("CDC/svc", "k") == 0 and not await tx.seen("id-1")
        conn.execute("INSERT INTO effects VALUES (1)")
        await tx.done("CDC/svc", "k", 4, "id-1")
    async with store.transaction() as tx:
        await tx.done("CDC/svc", "k", 2, None)  # never moves back
    assert await store.last_seq("CDC/svc", "k") == 4
    assert conn.execute("SELECT COUNT(*) FROM effects").fetchone()[0] == 1
    async with store.transaction() as tx:
        assert await tx.seen("id-1")


async def test_pruning_keeps_key_positions_above_the_ack_floor() -> None:
    for store in (SqliteSeenStore(sqlite3.connect(":memory:"), "svc"), MemorySeenStore()):
        async with store.transaction() as tx:
            await tx.done("S", "a", 5, "id-a")
            await tx.done("S", "b", 50, "id-b")
            await tx.done("other", "a", 1, None)
        future = 2**62
        assert await store.prune(0, "S", 100) == 0  # nothing older than the cutoff
        # both ids go; key "a" (5 <= floor 10) goes; "b" (above the floor) stays;
        # another scope is left alone
        assert await store.prune(future, "S", 10) == 3
        assert await store.last_seq("S", "b") == 50
        assert await store.last_seq("S", "a") == 0
        assert await store.last_seq("other", "a") == 1


def test_order_key_is_per_table_and_row_key() -> None:
    a = ChangeEvent(adapter="erp", table="t", op="u", position="1", schema="s", key={"id": 1})
    b = ChangeEvent(adapter="erp", table="t", op="d", position="2", schema="s", key={"id": 1})
    c = ChangeEvent(adapter="erp", table="u", op="u", position="3", schema="s", key={"id": 1})
    ka = decode_event("x", a.encode()).order_key
    assert ka == decode_event("x", b.encode()).order_key == 'erp/s/t|{"id":1}'
    assert ka != decode_event("x", c.encode()).order_key
    assert order_key_of(a.encode()) == ka and order_key_of(b"junk") is None


def test_dead_letters_have_their_own_subjects_and_stream() -> None:
    assert dead_letter_subject("cdc", "erp") == "cdc_dlq.erp"
    assert dead_letter_stream("CDC") == "CDC_DLQ"
    s = ConsumerSettings(servers=[], durable="billing", filter_subject="cdc.erp.>")
    assert s.dlq_subject() == "cdc_dlq._consumer.billing" and s.dlq_stream() == "CDC_DLQ"
    assert not s.dlq_subject().startswith("cdc.")
    h = redrive_headers({"Nats-Msg-Id": "dlq:x", "Cdc-Original-Seq": "7",
                         "Cdc-Original-Stream": "CDC", "Cdc-Reason": "r"}, "CDC_DLQ", 3)
    assert h["Nats-Msg-Id"] == "redrive:CDC_DLQ:3" and h["Cdc-Replay-Seq"] == "7"
    assert h["Cdc-Redriven-From"] == "CDC_DLQ:3"


def test_latency_histogram_is_cumulative() -> None:
    h = Histogram()
    for s in (0.0005, 0.003, 0.003, 100.0):
        h.observe(s)
    cum = dict(h.cumulative())
    assert cum["0.001"] == 1 and cum["0.005"] == 3 and cum["+Inf"] == 4 and h.n == 4
