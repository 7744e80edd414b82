"""Pure logic of the client's schema support: upcaster chains, row validation, the
registry's cache (over an in-memory bucket), the consumer's schema stage, and the
decoding of the bridge's own schema-change events."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import orjson
import pytest

from cdc_bridge.client.events import SCHEMA_OP, decode_event, event_of, order_key_of
from cdc_bridge.client.evolution import Rejected, SchemaStage
from cdc_bridge.client.schemas import SchemaEntry, SchemaNotFound, SchemaRegistry
from cdc_bridge.client.upcasting import UpcastError, Upcasters
from cdc_bridge.client.validation import RowValidators
from cdc_bridge.kernel.events import UNCHANGED_TOAST_PLACEHOLDER, ChangeEvent
from cdc_bridge.kernel.schema_policy import SchemaPolicy
from cdc_bridge.kernel.schemas import registry_entry, registry_key, schema_uri
from cdc_bridge.kernel.shapes import ColumnShape, TableShape
from cdc_bridge.outbox.base import OutboxMessage, SchemaState
from cdc_bridge.outbox.schema_tracker import SchemaTracker

BUCKET = "CDC_SCHEMAS"
V1 = TableShape.of([ColumnShape("id", "int4", "integer", False),
                    ColumnShape("total", "numeric(10,2)", "string", True)], ["id"])
V2 = TableShape.of([*V1.columns, ColumnShape("currency", "text", "string", False)], ["id"])


def row_event(version: int | None, after: dict[str, Any], op: str = "c",
              position: str = "p:1") -> dict[str, Any]:
    ev = ChangeEvent(adapter="shop", schema="public", table="orders", op=op,  # type: ignore[arg-type]
                     position=position, key={"id": after["id"]}, after=after)
    ref = None if version is None else (schema_uri(BUCKET, "shop", "public", "orders",
                                                   version), version)
    return ev.to_cloudevent(schema=ref)


def entry(version: int, shape: TableShape = V1) -> dict[str, Any]:
    return registry_entry("shop", "public", "orders", version, shape, BUCKET)


def v1_to_v2(ce: dict[str, Any]) -> dict[str, Any]:
    for image in ("before", "after"):
        if ce["data"][image] is not None:
            ce["data"][image]["currency"] = "EUR"
    return ce


def v2_to_v3(ce: dict[str, Any]) -> dict[str, Any]:
    after = ce["data"]["after"]
    if after is not None:
        after["amount"] = after.pop("total")
    return ce


# -- upcasters -------------------------------------------------------------------------


def test_a_chain_brings_an_old_event_to_the_target_and_says_so() -> None:
    up = Upcasters()
    up.register("shop", "public.orders", from_version=1)(v1_to_v2)
    up.add("shop", "public.orders", 2, v2_to_v3)
    assert up.target_of("shop", "public.orders") == 3
    ce, steps = up.upcast(row_event(1, {"id": 7, "total": "9.50"}))
    assert steps == 2
    assert ce["data"]["after"] == {"id": 7, "amount": "9.50", "currency": "EUR"}
    assert ce["data"]["source"]["schema_version"] == 3
    assert ce["dataschema"] == f"nats-kv://{BUCKET}/shop.public.orders.v3"
    ce2, steps2 = up.upcast(row_event(2, {"id": 8, "total": "1", "currency": "USD"}))
    assert steps2 == 1 and ce2["data"]["after"]["currency"] == "USD"


def test_events_at_the_target_without_a_version_or_of_other_tables_are_left_alone() -> None:
    up = Upcasters()
    up.add("shop", "public.orders", 1, v1_to_v2)
    for ce in (row_event(2, {"id": 1, "total": None, "currency": "EUR"}),
               row_event(None, {"id": 1, "total": None}),
               {**row_event(1, {"id": 1, "total": None}), "data": {
                   **row_event(1, {"id": 1, "total": None})["data"],
                   "source": {"adapter": "shop", "schema": "public", "table": "lines",
                              "schema_version": 1}}}):
        out, steps = up.upcast(ce)
        assert steps == 0 and out is ce
    assert not up.needs("shop", "public.orders", 2) and up.needs("shop", "public.orders", 1)
    assert not up.needs("shop", "public.orders", None)


def test_a_gap_in_a_chain_is_an_error_before_any_event() -> None:
    up = Upcasters()
    up.add("shop", "public.orders", 1, v1_to_v2)
    up.add("shop", "public.orders", 3, v2_to_v3)
    with pytest.raises(UpcastError, match=r"shop public.orders: no upcaster from v2"):
        up.check()
    with pytest.raises(UpcastError, match="missing links"):
        up.upcast(row_event(1, {"id": 1, "total": None}))
    with pytest.raises(UpcastError, match="v2"):
        SchemaStage(upcasters=up)  # the consumer is built with it: fails at once
    up.add("shop", "public.orders", 2, v2_to_v3)
    up.check()
    declared = Upcasters()
    declared.add("shop", "public.orders", 1, v1_to_v2)
    declared.target("shop", "public.orders", 4)  # no step from 2 nor from 3
    with pytest.raises(UpcastError, match=r"v2, v3 \(chain v1 -> v4\)"):
        declared.check()


def test_registration_mistakes_are_refused_at_once() -> None:
    up = Upcasters()
    up.add("shop", "public.orders", 1, v1_to_v2)
    with pytest.raises(ValueError, match="registered already"):
        up.add("shop", "public.orders", 1, v2_to_v3)
    with pytest.raises(ValueError, match=r"<schema>\.<table>"):
        up.add("shop", "orders", 1, v1_to_v2)
    with pytest.raises(ValueError, match="version number"):
        up.add("shop", "public.orders", 0, v1_to_v2)
    with pytest.raises(ValueError, match="goes past the target v1"):
        up.target("shop", "public.orders", 1)
    up.target("shop", "public.orders", 2)
    with pytest.raises(ValueError, match="goes past the declared target v2"):
        up.add("shop", "public.orders", 2, v2_to_v3)


def test_an_event_older_than_the_chain_or_a_bad_upcaster_cannot_be_upcast() -> None:
    up = Upcasters()
    up.add("shop", "public.orders", 2, v2_to_v3)
    with pytest.raises(UpcastError, match="older than the first upcaster"):
        up.upcast(row_event(1, {"id": 1, "total": None}))
    bad = Upcasters()
    bad.add("shop", "public.orders", 1, lambda ce: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(UpcastError, match="did not return"):
        bad.upcast(row_event(1, {"id": 1, "total": None}))


# -- validation ------------------------------------------------------------------------


def test_rows_are_checked_against_their_version_with_one_compiled_validator() -> None:
    validators = RowValidators()
    doc = entry(2, V2)
    uri, schema = doc["uri"], doc["json_schema"]
    assert validators.problem(uri, schema, {"id": 1, "total": None, "currency": "EUR"}) is None
    wrong = validators.problem(uri, schema, {"id": "x", "total": "1.00", "currency": "EUR"})
    assert wrong is not None and wrong.startswith("id: ") and "integer" in wrong
    missing = validators.problem(uri, schema, {"id": 1, "total": "1.00"})
    assert missing is not None and "currency" in missing
    extra = validators.problem(uri, schema, {"id": 1, "total": None, "currency": "E",
                                             "secret": 1})
    assert extra is not None and "secret" in extra
    assert validators.problem(uri, schema, {"id": 1, "total": None, "currency": None})
    assert len(validators) == 1
    # an unchanged TOASTed value is unknown, not wrong; the other columns are still checked
    toast = UNCHANGED_TOAST_PLACEHOLDER
    assert validators.problem(uri, schema, {"id": 1, "total": toast, "currency": "E"}) is None
    assert validators.problem(uri, schema, {"id": toast, "total": None, "currency": "E"}) is None
    still = validators.problem(uri, schema, {"id": "x", "total": toast, "currency": "E"})
    assert still is not None and still.startswith("id: ")


def test_importing_the_pure_modules_loads_neither_nats_nor_jsonschema() -> None:
    code = ("import sys; import cdc_bridge.client.upcasting, cdc_bridge.client.validation, "
            "cdc_bridge.client.events; "
            "print(sorted(m for m in ('nats', 'jsonschema') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd="/").stdout
    assert out.strip() == "[]"


# -- the registry's cache --------------------------------------------------------------


class MemoryBucket:
    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.data = {k: orjson.dumps(v) for k, v in docs.items()}
        self.gets: list[str] = []

    async def value(self, key: str) -> bytes | None:
        self.gets.append(key)
        await asyncio.sleep(0.01)
        return self.data.get(key)

    async def keys(self, pattern: str) -> list[str]:
        base = pattern.removesuffix("*")
        return [k for k in self.data if k.startswith(base) and "." not in k[len(base):]]


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def registry_over(bucket: MemoryBucket, clock: Clock | None = None) -> SchemaRegistry:
    async def opener(name: str) -> MemoryBucket:
        if name != BUCKET:
            raise SchemaNotFound(f"no bucket {name}")
        return bucket

    return SchemaRegistry(bucket=BUCKET, opener=opener, clock=clock or Clock(),
                          latest_ttl_s=5.0)


async def test_versions_are_read_once_and_shared_by_concurrent_asks() -> None:
    key1, key2 = registry_key("shop", "public", "orders", 1), \
        registry_key("shop", "public", "orders", 2)
    bucket = MemoryBucket({key1: entry(1), key2: entry(2, V2),
                           registry_key("shop", "public", "orders"): entry(2, V2)})
    reg = registry_over(bucket)
    got = await asyncio.gather(*(reg.get("shop", "public", "orders", 1) for _ in range(5)))
    assert {e.version for e in got} == {1} and bucket.gets == [key1]
    by_event = await reg.for_event(row_event(1, {"id": 1, "total": None}))
    assert by_event is got[0] and bucket.gets == [key1]
    assert await reg.for_event(row_event(None, {"id": 1, "total": None})) is None
    assert (await reg.get("shop", "public", "orders", 2)).shape().names() == \
        ["id", "total", "currency"]
    assert await reg.versions("shop", "public", "orders") == [1, 2]
    with pytest.raises(SchemaNotFound, match=r"has no shop\.public\.orders\.v3"):
        await reg.get("shop", "public", "orders", 3)
    bucket.data[registry_key("shop", "public", "orders", 3)] = orjson.dumps(entry(3, V2))
    assert (await reg.get("shop", "public", "orders", 3)).version == 3  # not found: not cached
    with pytest.raises(SchemaNotFound, match="no bucket OTHER"):
        await reg.for_uri("nats-kv://OTHER/shop.public.orders.v1")
    with pytest.raises(SchemaNotFound, match="not a schema registry URI"):
        await reg.for_uri("https://example.invalid/s.json")


async def test_latest_is_trusted_for_its_ttl_and_moved_by_a_schema_change() -> None:
    latest = registry_key("shop", "public", "orders")
    bucket = MemoryBucket({latest: entry(1)})
    clock = Clock()
    reg = registry_over(bucket, clock)
    assert (await reg.latest("shop", "public", "orders")).version == 1
    bucket.data[latest] = orjson.dumps(entry(2, V2))
    clock.now += 4.0
    assert (await reg.latest("shop", "public", "orders")).version == 1  # within the TTL
    clock.now += 1.5
    assert (await reg.latest("shop", "public", "orders")).version == 2
    assert bucket.gets.count(latest) == 2
    remembered = reg.remember(entry(3, V2))
    assert remembered is not None and remembered.version == 3
    assert (await reg.latest("shop", "public", "orders")).version == 3  # no read
    assert (await reg.get("shop", "public", "orders", 3)).version == 3
    assert bucket.gets.count(latest) == 2
    reg.remember(entry(1))  # an older one never moves latest back
    assert (await reg.latest("shop", "public", "orders")).version == 3
    reg.forget_latest("shop", "public", "orders")
    assert (await reg.latest("shop", "public", "orders")).version == 2  # read again
    assert reg.remember({"not": "an entry"}) is None
    assert SchemaEntry.of(entry(1)).registry_key == "shop.public.orders.v1"


# -- schema-change events and the consumer's stage -------------------------------------


def schema_change_message(shape: TableShape, stored: list[SchemaState] | None = None
                          ) -> OutboxMessage:
    """The schema-change message the outbox writer puts before a new version's rows."""
    tracker = SchemaTracker("shop", "cdc", BUCKET, SchemaPolicy(), stored or [])
    out: list[OutboxMessage] = []
    ev = ChangeEvent(adapter="shop", schema="public", table="orders", op="c",
                     position="p:1", key={"id": 1}, after={"id": 1}, shape=shape)
    tracker.ref(ev, shape, out, 0)
    assert len(out) == 1
    return out[0]


def test_the_bridges_schema_change_event_decodes_and_keeps_its_table_order_key() -> None:
    msg = schema_change_message(V1)
    event = decode_event(msg.subject, msg.payload, msg.headers, 5)
    assert msg.subject == "cdc._schema.shop.public.orders"
    assert event.op == SCHEMA_OP and event.is_schema_change
    assert (event.adapter, event.schema, event.table) == ("shop", "public", "orders")
    assert event.schema_version == 1 and event.data["new_version"] == 1
    assert event.before is None and event.after is None
    assert event.dataschema == f"nats-kv://{BUCKET}/shop.public.orders.v1"
    assert event.order_key == order_key_of(msg.payload) == "shop/public/orders|public.orders"
    # a keyless row of the same table is ordered with it
    keyless = ChangeEvent(adapter="shop", schema="public", table="orders", op="t",
                          position="p:2")
    assert order_key_of(keyless.encode()) == event.order_key
    row = decode_event("cdc.shop.public.orders.c",
                       orjson.dumps(row_event(1, {"id": 1, "total": None})))
    assert row.schema_version == 1 and row.table_ref == "public.orders"
    assert not row.is_schema_change


class Entries:
    """A registry stand-in answering from documents (counts its reads)."""

    def __init__(self, *docs: dict[str, Any]) -> None:
        self.registry = registry_over(MemoryBucket({
            registry_key("shop", "public", "orders", d["version"]): d for d in docs}))


async def test_the_stage_validates_then_upcasts_and_passes_schema_changes_through() -> None:
    up = Upcasters()
    up.add("shop", "public.orders", 1, v1_to_v2)
    reg = Entries(entry(1)).registry
    stage = SchemaStage(validate=True, upcasters=up, registry=reg)
    body = orjson.dumps(row_event(1, {"id": 3, "total": "2.00"}))
    event = decode_event("cdc.shop.public.orders.c", body, {"Cdc-Replay-Seq": "42"}, 9)
    out = await stage.prepare(event, body)
    assert out.after == {"id": 3, "total": "2.00", "currency": "EUR"}
    assert out.schema_version == 2 and out.dataschema is not None \
        and out.dataschema.endswith(".v2")
    assert (out.order_key, out.sequence, out.id) == (event.order_key, 42, event.id)
    assert stage.validated == 1 and stage.upcast == 1

    bad_body = orjson.dumps(row_event(1, {"id": "three", "total": "2.00"}))
    bad = decode_event("cdc.shop.public.orders.c", bad_body)
    with pytest.raises(Rejected, match=r"after-image does not match .*orders.v1: id: "):
        await stage.prepare(bad, bad_body)

    # the v2 entry arrives with its schema-change event: validation needs no read then
    msg = schema_change_message(V2, [SchemaState("public.orders", 1, V1.fingerprint(),
                                                 entry(1))])
    assert orjson.loads(msg.payload)["data"]["new_version"] == 2
    change = decode_event(msg.subject, msg.payload, msg.headers)
    assert await stage.prepare(change, msg.payload) is change
    v2_body = orjson.dumps(row_event(2, {"id": 4, "total": None, "currency": "USD"}))
    v2 = decode_event("cdc.shop.public.orders.c", v2_body)
    assert await stage.prepare(v2, v2_body) is v2  # valid, at the target: untouched
    assert reg.reads == 1

    d_ce = row_event(1, {"id": 5})
    d_ce["data"].update(op="d", after=None, before={"id": 5})  # a key-only before-image
    d_body = orjson.dumps(d_ce)
    deleted = await stage.prepare(decode_event("cdc.shop.public.orders.d", d_body), d_body)
    assert deleted.op == "d" and deleted.before == {"id": 5, "currency": "EUR"}
    assert stage.validated == 2  # only after-images of c/u/r are checked


async def test_an_upcaster_that_breaks_the_envelope_is_a_rejection() -> None:
    up = Upcasters()
    up.add("shop", "public.orders", 1, lambda ce: {**ce, "data": {"op": "zap"}})
    stage = SchemaStage(upcasters=up)
    body = orjson.dumps(row_event(1, {"id": 1, "total": None}))
    with pytest.raises(Rejected, match="not a change event"):
        await stage.prepare(decode_event("s", body), body)
    with pytest.raises(ValueError):
        event_of("s", {"specversion": "1.0", "data": {"op": "x"}})


def test_each_connection_gets_its_own_reader_and_the_cache_is_kept() -> None:
    stage = SchemaStage(upcasters=Upcasters())
    stage.bind(object(), "ERP")  # type: ignore[arg-type]
    first = stage.registry
    assert first is not None and first.bucket == "ERP_SCHEMAS"
    first.remember(entry(1))
    stage.bind(object(), "ERP")  # type: ignore[arg-type]  (Consumer.run again)
    assert stage.registry is not first and stage.registry is not None
    assert stage.registry.cached() == 1
    given = registry_over(MemoryBucket({}))
    own = SchemaStage(validate=True, registry=given)
    own.bind(object(), "ERP")  # type: ignore[arg-type]
    assert own.registry is given
