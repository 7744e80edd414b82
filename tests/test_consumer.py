"""cdc_bridge.client.consumer with real JetStream: redelivery, idempotency, dead letters."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js import api

from cdc_bridge.client.consumer import Consumer, ConsumerSettings, Event, decode_event
from cdc_bridge.client.seen import MemorySeenStore, SqliteSeenStore
from cdc_bridge.kernel.events import ChangeEvent
from tests.helpers import read_stream
from tests.services.nats_server import NatsServer


def change(i: int, op: str = "c") -> ChangeEvent:
    return ChangeEvent(adapter="erp", table="invoices", op=op, position=f"invoices:{i}",  # type: ignore[arg-type]
                       key={"id": i}, after={"id": i, "amount": f"{i}.00"}, ts_ms=1_700_000_000_000)


@pytest.fixture
async def js_stream(nats_server: NatsServer) -> AsyncIterator[nats.js.JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="CDC", subjects=["cdc.>"]))
    yield js
    await nc.close()


async def publish(js: nats.js.JetStreamContext, ev: ChangeEvent, msg_id: str | None = None,
                  body: bytes | None = None) -> None:
    await js.publish(ev.subject("cdc"), body if body is not None else ev.encode(),
                     headers={"Nats-Msg-Id": msg_id or ev.id})


def settings(url: str, **kw: object) -> ConsumerSettings:
    base: dict[str, object] = {"servers": [url], "durable": "svc",
                               "filter_subject": "cdc.erp.>", "backoff_s": (0.2,),
                               "max_deliveries": 3, "ack_wait_s": 5.0}
    base.update(kw)
    return ConsumerSettings(**base)  # type: ignore[arg-type]


async def run_until(consumer: Consumer, done: asyncio.Event, timeout_s: float = 20) -> None:
    task = asyncio.create_task(consumer.run(fetch_timeout_s=0.3))
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
        await asyncio.sleep(0.5)  # let acks/terms reach the server
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)


def test_decode_event_is_typed_and_frozen() -> None:
    ev = change(7)
    decoded = decode_event("cdc.erp._.invoices.c", ev.encode(), {"Cdc-Replay-Seq": "41"}, 3, 2)
    assert decoded.id == ev.id and decoded.op == "c" and decoded.key == {"id": 7}
    assert decoded.after == {"id": 7, "amount": "7.00"} and decoded.before is None
    assert decoded.table == "invoices" and decoded.adapter == "erp" and decoded.schema is None
    assert decoded.sequence == 41 and decoded.deliveries == 2
    assert decoded.time is not None and decoded.time.year == 2023
    with pytest.raises(AttributeError):
        decoded.op = "d"  # type: ignore[misc]
    for bad in (b"not json", b"{}", b'{"specversion": "1.0", "data": {"op": "x"}}'):
        with pytest.raises(ValueError):
            decode_event("s", bad)


async def test_redelivery_after_a_handler_error(nats_server: NatsServer,
                                                js_stream: nats.js.JetStreamContext) -> None:
    for i in (1, 2, 3):
        await publish(js_stream, change(i))
    calls: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        calls.append((event.key["id"], event.deliveries))  # type: ignore[index]
        if event.key == {"id": 2} and event.deliveries == 1:
            raise RuntimeError("database busy")
        if len({c[0] for c in calls if c != (2, 1)}) == 3:
            done.set()

    consumer = Consumer(settings(nats_server.url), handler, MemorySeenStore())
    await run_until(consumer, done)
    assert (2, 1) in calls and (2, 2) in calls
    assert consumer.stats.handled == 3 and consumer.stats.failures == 1
    assert consumer.stats.dead_lettered == 0
    info = await js_stream.consumer_info("CDC", "svc")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_handler_runs_once_per_event_id(nats_server: NatsServer, tmp_path: Path,
                                             js_stream: nats.js.JetStreamContext) -> None:
    # the same change stored twice (different message ids), plus a third event
    await publish(js_stream, change(1))
    await publish(js_stream, change(1), msg_id="another-copy")
    await publish(js_stream, change(2))
    db = tmp_path / "svc.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE applied (id INTEGER)")
    seen = SqliteSeenStore(conn, "svc")
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        conn.execute("INSERT INTO applied VALUES (?)", (event.key["id"],))  # type: ignore[index]
        if event.key == {"id": 2}:
            done.set()

    consumer = Consumer(settings(nats_server.url), handler, seen)
    await run_until(consumer, done)
    assert consumer.stats.handled == 2 and consumer.stats.duplicates == 1
    assert sorted(r[0] for r in conn.execute("SELECT id FROM applied")) == [1, 2]
    # a later process (new durable, same seen-store file) skips what was applied
    await publish(js_stream, change(3))
    seen2 = SqliteSeenStore(db, "svc")
    applied: list[int] = []
    done2 = asyncio.Event()

    async def handler2(event: Event) -> None:
        applied.append(event.key["id"])  # type: ignore[index]
        done2.set()

    consumer2 = Consumer(settings(nats_server.url, durable="svc2"), handler2, seen2)
    await run_until(consumer2, done2)
    assert applied == [3]
    assert consumer2.stats.duplicates == 3


async def test_failed_write_is_rolled_back_with_the_seen_mark(
        nats_server: NatsServer, tmp_path: Path, js_stream: nats.js.JetStreamContext) -> None:
    await publish(js_stream, change(5))
    conn = sqlite3.connect(tmp_path / "svc.db")
    conn.execute("CREATE TABLE applied (id INTEGER)")
    conn.commit()
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        conn.execute("INSERT INTO applied VALUES (?)", (event.key["id"],))  # type: ignore[index]
        if event.deliveries == 1:
            raise RuntimeError("fails after writing")
        done.set()

    consumer = Consumer(settings(nats_server.url), handler, SqliteSeenStore(conn, "svc"))
    await run_until(consumer, done)
    assert [r[0] for r in conn.execute("SELECT id FROM applied")] == [5]


async def test_dead_letter_after_max_deliveries(nats_server: NatsServer,
                                                js_stream: nats.js.JetStreamContext) -> None:
    await publish(js_stream, change(1))
    await publish(js_stream, change(2))
    await js_stream.publish("cdc.erp._.invoices.c", b"\x00garbage",
                            headers={"Nats-Msg-Id": "garbage-1"})
    attempts: list[int] = []
    ok: list[int] = []
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        if event.key == {"id": 1}:
            attempts.append(event.deliveries)
            raise ValueError("invoice 1 can never be applied")
        ok.append(2)

    consumer = Consumer(settings(nats_server.url), handler, MemorySeenStore())

    async def watch() -> None:
        while consumer.stats.dead_lettered < 2:
            await asyncio.sleep(0.1)
        done.set()

    watcher = asyncio.create_task(watch())
    await run_until(consumer, done)
    watcher.cancel()
    assert attempts == [1, 2, 3]
    assert ok == [2]
    dead = await read_stream(nats_server.url, stream="CDC_DLQ", subject="cdc_dlq._consumer.svc")
    assert len(dead) == 2
    by_reason = {m.headers["Cdc-Original-Seq"]: m for m in dead}
    first = by_reason["1"]
    assert "invoice 1 can never be applied" in first.headers["Cdc-Reason"]
    assert first.headers["Cdc-Deliveries"] == "3"
    assert first.headers["Cdc-Original-Subject"] == "cdc.erp._.invoices.c"
    assert first.headers["Cdc-Original-Stream"] == "CDC"
    assert first.headers["Cdc-Consumer"] == "svc"
    assert first.headers["Cdc-Original-Id"] == change(1).id
    assert first.headers["Cdc-Order-Key"] == "erp/_/invoices|{\"id\":1}"
    assert first.headers["Cdc-Dead-Lettered-At"].startswith("20")
    assert first.body["data"]["key"] == {"id": 1}
    assert by_reason["3"].headers["Cdc-Reason"].startswith("undecodable")
    await asyncio.sleep(1.0)  # terminated: no further delivery
    assert attempts == [1, 2, 3]
    info = await js_stream.consumer_info("CDC", "svc")
    assert info.num_ack_pending == 0
