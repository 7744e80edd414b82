"""The client's schema support against a real nats-server (docs/consumers.md, "Schemas and
upcasting").

The history is made by the bridge's own capture and relay code, in process: an
:class:`OutboxWriter` with schemas on (versions numbered in the outbox, a schema-change
event before the first row of each version) on a SQLite outbox, and the relay, which
puts each version into the ``CDC_SCHEMAS`` bucket before the version's events. Table
``public.orders`` goes from v1 (id, total) to v2 (id, total, currency NOT NULL); one v2
row does not match its version.

Then: the :class:`SchemaRegistry` resolves and caches what the relay put; a durable
``Consumer`` created over the whole stream (deliver all) with ``validate=True`` and a
v1 -> v2 upcaster hands its handler only v2-shaped rows (and the schema-change events,
unchanged), dead-letters the invalid row with the reason, and reads each version from
the bucket at most once.

End to end, a ``cdc-bridge run`` process with a ``files`` source (a dropped CSV whose
header gains a column is v2): a consumer started after it, validating and upcasting,
gets every row valid and in the v2 shape.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest

from cdc_bridge.client.consumer import Consumer, ConsumerSettings, Event
from cdc_bridge.client.schemas import SchemaNotFound, SchemaRegistry
from cdc_bridge.client.seen import MemorySeenStore
from cdc_bridge.client.upcasting import Upcasters
from cdc_bridge.kernel.batch import ChangeBatch
from cdc_bridge.kernel.events import ChangeEvent
from cdc_bridge.kernel.shapes import ColumnShape, TableShape
from cdc_bridge.kernel.wire import ORIGINAL_ID, REASON
from cdc_bridge.outbox.writer import OutboxWriter, SchemaSettings
from tests.helpers import BridgeProcess, read_raw, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.test_relay import nats_cfg, running

BUCKET = "CDC_SCHEMAS"
V1 = TableShape.of([ColumnShape("id", "int4", "integer", False),
                    ColumnShape("total", "numeric(10,2)", "string", True)], ["id"])
V2 = TableShape.of([*V1.columns, ColumnShape("currency", "text", "string", False)], ["id"])
V1_IDS = range(1, 6)
V2_IDS = range(6, 9)
BAD_ID = 99


def _row(i: int, shape: TableShape, after: dict[str, Any], op: str = "c") -> ChangeEvent:
    return ChangeEvent(adapter="shop", schema="public", table="orders", op=op,  # type: ignore[arg-type]
                       position=f"lsn:{op}{i}", key={"id": i}, after=after, shape=shape)


async def _history(tmp_path: Path, url: str) -> None:
    """Capture v1 rows, then v2 rows (one of them invalid), and relay them all."""
    async with running(tmp_path / "outbox.db", nats_cfg(url)) as runner:
        writer = OutboxWriter(runner.store, "shop", "cdc",
                              schemas=SchemaSettings(bucket=BUCKET))
        await writer.commit(ChangeBatch(
            [_row(i, V1, {"id": i, "total": f"{i}.00"}) for i in V1_IDS], {"n": 1}))
        # the same key again, updated under v2: per-key order must hold across versions
        await writer.commit(ChangeBatch(
            [_row(i, V2, {"id": i, "total": f"{i}.50", "currency": "USD"}) for i in V2_IDS]
            + [_row(BAD_ID, V2, {"id": "ninety-nine", "total": None, "currency": "USD"}),
               _row(1, V2, {"id": 1, "total": "1.75", "currency": "CHF"}, "u")], {"n": 2}))
        await runner.drained(30)


@pytest.fixture
async def history(tmp_path: Path, nats_server: NatsServer) -> str:
    await _history(tmp_path, nats_server.url)
    return nats_server.url


async def test_the_registry_resolves_and_caches_what_the_relay_put(history: str) -> None:
    rows = [orjson.loads(m.data) for m in await read_raw(history, "CDC", "cdc.shop.>")]
    assert [r["data"]["source"]["schema_version"] for r in rows] == [1] * 5 + [2] * 5
    nc = await nats.connect(history)
    try:
        registry = SchemaRegistry(nc.jetstream())  # bucket CDC_SCHEMAS: <stream>_SCHEMAS
        v1 = await registry.for_event(rows[0])
        assert v1 is not None and v1.version == 1 and v1.shape().names() == ["id", "total"]
        assert v1.uri == rows[0]["dataschema"] == f"nats-kv://{BUCKET}/shop.public.orders.v1"
        v2 = await registry.get("shop", "public", "orders", 2)
        assert v2.shape().fingerprint() == V2.fingerprint()
        assert v2.json_schema["required"] == ["id", "total", "currency"]
        assert (await registry.latest("shop", "public", "orders")).version == 2
        assert await registry.versions("shop", "public", "orders") == [1, 2]
        reads = registry.reads
        for row in rows:
            await registry.for_event(row)
        await registry.get("shop", "public", "orders", 1)
        assert registry.reads == reads, "versions are read once"
        with pytest.raises(SchemaNotFound):
            await registry.get("shop", "public", "orders", 3)
        with pytest.raises(SchemaNotFound):
            await SchemaRegistry(nc.jetstream(), "NO_SUCH_BUCKET").latest("shop", "public",
                                                                            "orders")
    finally:
        await nc.close()


async def test_a_replay_with_an_upcaster_hands_over_only_v2_rows_and_dead_letters_the_invalid(
        history: str) -> None:
    upcasters = Upcasters()

    @upcasters.register("shop", "public.orders", from_version=1)
    def v1_to_v2(event: dict[str, Any]) -> dict[str, Any]:
        event["data"]["after"]["currency"] = "EUR"
        return event

    seen: list[Event] = []

    async def handle(event: Event) -> None:
        seen.append(event)

    nc = await nats.connect(history)
    registry = SchemaRegistry(nc.jetstream())
    consumer = Consumer(ConsumerSettings(servers=[history], durable="orders-v2",
                                         filter_subject="cdc.>", backoff_s=(0.1,),
                                         max_deliveries=2),
                        handle, MemorySeenStore(), validate=True, upcasters=upcasters,
                        registry=registry)
    try:
        await asyncio.wait_for(consumer.run(stop_when_idle=True, fetch_timeout_s=0.3), 30)
    finally:
        await nc.close()

    changes = [e for e in seen if e.is_schema_change]
    rows = [e for e in seen if not e.is_schema_change]
    assert sorted(e.data["new_version"] for e in changes) == [1, 2]
    assert all(e.op == "schema" and e.after is None for e in changes)
    assert len(rows) == len(V1_IDS) + len(V2_IDS) + 1
    assert all(e.schema_version == 2 and e.dataschema == f"nats-kv://{BUCKET}/"
               "shop.public.orders.v2" for e in rows)
    assert all(e.after is not None and set(e.after) == {"id", "total", "currency"}
               for e in rows), [e.after for e in rows]
    by_id = {}
    for e in rows:
        assert e.after is not None
        by_id.setdefault(e.after["id"], []).append(e.after["currency"])
    assert by_id[1] == ["EUR", "CHF"], "the v1 row upcast, then its v2 update, in order"
    assert {i: c for i, (c, *_) in by_id.items()} == {
        **{i: "EUR" for i in V1_IDS}, **{i: "USD" for i in V2_IDS}}
    assert consumer.stats.upcast == len(V1_IDS)
    assert consumer.stats.schema_rejected == 1 and consumer.stats.dead_lettered == 1
    assert consumer.stats.failures == 0
    assert registry.reads <= 2, "each version read from the bucket at most once"

    dead = await read_raw(history, "CDC_DLQ")
    assert len(dead) == 1
    headers = dict(dead[0].headers or {})
    assert headers[REASON].startswith("schema: event ")
    assert "does not match nats-kv://CDC_SCHEMAS/shop.public.orders.v2: id: " in headers[REASON]
    assert orjson.loads(dead[0].data)["data"]["after"]["id"] == "ninety-nine"
    assert headers[ORIGINAL_ID] == orjson.loads(dead[0].data)["id"]


def test_a_real_bridge_run_replayed_through_validation_and_an_upcaster(
        tmp_path: Path, nats_server: NatsServer) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [{"type": "files", "name": "drops", "path": str(drops),
                      "pattern": "*.csv", "mode": "drop", "key": ["id"],
                      "types": {"id": "int", "qty": "int"}, "table": "orders",
                      "poll_interval": "100ms", "stable_for": "100ms",
                      "after": {"action": "delete"}}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        (drops / "a.csv").write_text("id,note\n1,x\n2,y\n")
        wait_for(lambda: not (drops / "a.csv").exists(), 60, what="the v1 file read")
        (drops / "b.csv").write_text("id,note,qty\n3,z,7\n1,x again,\n")
        wait_for(lambda: len(stream_messages(nats_server.url)) >= 4 or None, 60, 0.3,
                 "every row")
    finally:
        assert bridge.terminate() == 0, bridge.log()

    upcasters = Upcasters()

    @upcasters.register("drops", "_.orders", from_version=1)
    def add_qty(event: dict[str, Any]) -> dict[str, Any]:
        event["data"]["after"]["qty"] = None  # v2's qty: an int, null when blank
        return event

    seen: list[Event] = []

    async def handle(event: Event) -> None:
        seen.append(event)

    async def consume() -> Consumer:
        consumer = Consumer(ConsumerSettings(servers=[nats_server.url], durable="orders",
                                             filter_subject="cdc.>", max_deliveries=1),
                            handle, MemorySeenStore(), validate=True, upcasters=upcasters)
        await asyncio.wait_for(consumer.run(stop_when_idle=True, fetch_timeout_s=0.3), 30)
        return consumer

    consumer = asyncio.run(consume())
    rows = sorted((e for e in seen if not e.is_schema_change), key=lambda e: e.sequence)
    assert sorted(e.data["new_version"] for e in seen if e.is_schema_change) == [1, 2]
    assert [dict(e.after or {}) for e in rows] == [
        {"id": 1, "note": "x", "qty": None}, {"id": 2, "note": "y", "qty": None},
        {"id": 3, "note": "z", "qty": 7}, {"id": 1, "note": "x again", "qty": None}]
    assert all(e.schema_version == 2 for e in rows)
    assert consumer.stats.upcast == 2 and consumer.stats.dead_lettered == 0, \
        consumer.stats.as_dict()
