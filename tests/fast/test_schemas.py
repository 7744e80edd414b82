"""Schema shapes, differences and verdicts, and the writer's version numbering (pure)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from cdc_bridge.kernel.batch import ChangeBatch
from cdc_bridge.kernel.events import ChangeEvent
from cdc_bridge.kernel.schema_policy import SchemaPolicy
from cdc_bridge.kernel.schemas import (
    ColumnShape,
    TableShape,
    diff,
    parse_schema_uri,
    registry_entry,
    registry_key,
    schema_uri,
    shape_of_entry,
    verdict,
)
from cdc_bridge.kernel.wire import SCHEMA_ENTRY
from cdc_bridge.outbox.base import SchemaState
from cdc_bridge.outbox.schema_tracker import SchemaTracker
from cdc_bridge.outbox.writer import encode_batch

pytestmark = pytest.mark.fast

ID = ColumnShape("id", "int4", "integer", False)
NAME = ColumnShape("name", "text", "string", True)


def shape(*cols: ColumnShape, key: tuple[str, ...] = ("id",)) -> TableShape:
    return TableShape.of(cols, key)


def test_fingerprint_is_by_value_and_lookup_by_identity() -> None:
    a, b = shape(ID, NAME), shape(ID, NAME)
    assert a.fingerprint() == b.fingerprint()
    assert a != b and len({a, b}) == 2  # identity
    assert shape(ID).fingerprint() != a.fingerprint()
    assert shape(ID, NAME, key=()).fingerprint() != a.fingerprint()


@pytest.mark.parametrize(("new", "expected"), [
    (shape(ID, NAME, ColumnShape("c", "text", "string", True)), "full"),
    (shape(ID, NAME, ColumnShape("c", "text", "string", False)), "forward"),
    (shape(ID), "full"),                                         # NAME may be null
    (shape(NAME, key=("id",)), "backward"),                      # NOT NULL id removed
    (shape(ID, ColumnShape("name", "varchar(9)", "string", True)), "full"),
    (shape(ID, ColumnShape("name", "int8", "integer", True)), "breaking"),
    (shape(ColumnShape("id", "numeric", "number", False), NAME), "backward"),
    (shape(ID, ColumnShape("name", "text", "string", False)), "forward"),   # now NOT NULL
    (shape(ColumnShape("id", "int4", "integer", True), NAME), "backward"),  # may be null
    (shape(ID, NAME, key=("name",)), "breaking"),
    (shape(ID, ColumnShape("title", "text", "string", True)), "breaking"),  # a rename
])
def test_verdicts(new: TableShape, expected: str) -> None:
    assert verdict(diff(shape(ID, NAME), new)) == expected


def test_diff_names_a_rename_only_at_the_same_place_with_the_same_type() -> None:
    d = diff(shape(ID, NAME), shape(ID, ColumnShape("title", "text", "string", True)))
    assert [(a.name, b.name) for a, b in d.renamed] == [("name", "title")]
    assert not d.added and not d.removed
    d = diff(shape(ID, NAME), shape(ID, ColumnShape("title", "int8", "integer", True)))
    assert not d.renamed and [c.name for c in d.added] == ["title"]
    assert any("renamed" in line for line in
               diff(shape(ID, NAME), shape(ID, ColumnShape("t", "text", "string"))).lines())


def test_registry_names_and_entries() -> None:
    assert registry_key("shop", "public", "or.ders", 3) == "shop.public.or_ders.v3"
    assert registry_key("shop", None, "t") == "shop._.t.latest"
    uri = schema_uri("CDC_SCHEMAS", "shop", "public", "orders", 2)
    assert parse_schema_uri(uri) == ("CDC_SCHEMAS", "shop.public.orders.v2")
    assert parse_schema_uri("https://example.com/x") is None
    entry = registry_entry("shop", "public", "orders", 2, shape(ID, NAME), "CDC_SCHEMAS")
    js = entry["json_schema"]
    assert js["required"] == ["id", "name"] and js["additionalProperties"] is False
    assert js["properties"]["id"]["type"] == "integer"
    assert js["properties"]["name"]["type"] == ["string", "null"]
    assert shape_of_entry(entry).fingerprint() == shape(ID, NAME).fingerprint()


def test_policy_per_table_and_verdicts() -> None:
    p = SchemaPolicy(on_breaking="pause", tables={"public.audit": "continue"})
    assert p.action("public", "orders", "breaking") == "pause"
    assert p.action("public", "orders", "backward") == "continue"
    assert p.action("public", "audit", "breaking") == "continue"
    strict = SchemaPolicy(on_breaking="pause", breaking=["breaking", "backward"])
    assert strict.action(None, "t", "backward") == "pause"


def _ev(i: int, s: TableShape, table: str = "orders", **after: Any) -> ChangeEvent:
    return ChangeEvent(adapter="shop", table=table, schema="public", op="u",
                       position=f"p{i}", key={"id": i}, after={"id": i, **after}, shape=s)


def _tracker(stored: list[SchemaState] | None = None, policy: SchemaPolicy | None = None
             ) -> SchemaTracker:
    return SchemaTracker("shop", "cdc", "CDC_SCHEMAS", policy or SchemaPolicy(), stored or [])


def test_writer_numbers_versions_and_puts_the_schema_event_first() -> None:
    t = _tracker()
    v1, v2 = shape(ID, NAME), shape(ID, NAME, ColumnShape("c", "text", "string", True))
    held: list[Any] = []
    batch = ChangeBatch([_ev(1, v1, name="a"), _ev(2, v1, name="b"), _ev(3, v2, c="x")])
    msgs = encode_batch(batch, "cdc", tracker=t, held=held)
    subjects = [m.subject for m in msgs]
    assert subjects == ["cdc._schema.shop.public.orders", "cdc.shop.public.orders.u",
                        "cdc.shop.public.orders.u", "cdc._schema.shop.public.orders",
                        "cdc.shop.public.orders.u"]
    bodies = [orjson.loads(m.payload) for m in msgs]
    assert bodies[0]["data"]["new_version"] == 1 and bodies[0]["data"]["old_version"] is None
    assert bodies[3]["data"]["new_version"] == 2 and bodies[3]["data"]["verdict"] == "full"
    assert msgs[3].headers is not None
    assert msgs[3].headers[SCHEMA_ENTRY] == "shop.public.orders.v2"
    assert bodies[1]["data"]["source"]["schema_version"] == 1
    assert bodies[4]["data"]["source"]["schema_version"] == 2
    assert bodies[4]["dataschema"].endswith("/shop.public.orders.v2")
    assert [st.version for st in t.take()] == [2] and not held
    t.committed()
    # the same look again (a new object, same fingerprint): no new version
    again = encode_batch(ChangeBatch([_ev(4, shape(ID, NAME, v2.columns[2]))]), "cdc",
                         tracker=t, held=held)
    assert len(again) == 1 and t.take() == []


def test_a_failed_append_numbers_the_same_version_again() -> None:
    t = _tracker()
    s = shape(ID)
    first = encode_batch(ChangeBatch([_ev(1, s)]), "cdc", tracker=t)
    t.rolled_back()
    second = encode_batch(ChangeBatch([_ev(1, s)]), "cdc", tracker=t)
    assert first[0].msg_id == second[0].msg_id
    assert orjson.loads(second[0].payload)["data"]["new_version"] == 1


def test_a_breaking_change_under_pause_holds_the_table_only() -> None:
    v1 = shape(ID, NAME)
    entry = registry_entry("shop", "public", "orders", 1, v1, "CDC_SCHEMAS")
    other = registry_entry("shop", "public", "audit", 1, v1, "CDC_SCHEMAS")
    t = _tracker([SchemaState("public.orders", 1, v1.fingerprint(), entry),
                  SchemaState("public.audit", 1, v1.fingerprint(), other)],
                 SchemaPolicy(on_breaking="pause"))
    v2 = shape(ID, ColumnShape("name", "int8", "integer", True))
    held: list[Any] = []
    batch = ChangeBatch([_ev(1, v1, name="a"), _ev(2, v2, name=5), _ev(3, v1, "audit"),
                         _ev(4, v2, name=6)])
    msgs = encode_batch(batch, "cdc", tracker=t, held=held)
    assert [m.subject for m in msgs] == ["cdc.shop.public.orders.u",
                                         "cdc._schema.shop.public.orders",
                                         "cdc.shop.public.audit.u"]
    assert [table for table, _ in held] == ["public.orders", "public.orders"]
    (state,) = t.take()
    assert state.version == 2 and state.paused and "schema accept shop" in state.paused
    t.committed()
    t.released("public.orders")
    flowing = encode_batch(ChangeBatch([_ev(5, v2, name=7)]), "cdc", tracker=t, held=held)
    assert len(flowing) == 1 and len(held) == 2


def test_the_writer_rolls_back_on_a_failed_append() -> None:
    from cdc_bridge.outbox.writer import OutboxWriter, SchemaSettings

    class Failing:
        calls = 0

        async def schema_states(self, adapter: str | None = None) -> list[Any]:
            return []

        async def append(self, *args: Any, **kwargs: Any) -> int:
            self.calls += 1
            if self.calls == 1:
                raise OSError("disk full")
            return 1

    async def run() -> None:
        store = Failing()
        w = OutboxWriter(store, "shop", "cdc", schemas=SchemaSettings("B"))  # type: ignore[arg-type]
        batch = ChangeBatch([_ev(1, shape(ID))])
        with pytest.raises(OSError):
            await w.commit(batch)
        await w.commit(batch)
        assert w.tracker is not None and w.tracker.versions() == {"public.orders": 1}

    asyncio.run(run())


def test_a_number_column_admits_the_non_finite_strings_and_nothing_else() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    col = ColumnShape("x", "float8", "number", False)
    schema = {"type": "object", "properties": {"x": col.json_schema()}}
    ok = jsonschema.Draft202012Validator(schema)
    for value in (1.5, 3, "NaN", "Infinity", "-Infinity"):
        assert ok.is_valid({"x": value}), value
    for value in ("nan", "1.5", None):
        assert not ok.is_valid({"x": value}), value
    maybe = ColumnShape("x", "float8", "number", None).json_schema()
    assert jsonschema.Draft202012Validator({"properties": {"x": maybe}}).is_valid({"x": None})


def test_tail_shows_a_schema_change_in_one_line() -> None:
    from cdc_bridge.cli.tail import format_event

    t = _tracker()
    v1 = shape(ID, NAME)
    encode_batch(ChangeBatch([_ev(1, v1)]), "cdc", tracker=t)
    t.committed()
    msgs = encode_batch(ChangeBatch([_ev(2, shape(ID, ColumnShape("title", "text", "string",
                                                                  True)))]), "cdc", tracker=t)
    line = format_event(msgs[0].subject, msgs[0].payload, 7)
    assert line == "#7 cdc._schema.shop.public.orders schema v1 -> v2 breaking [name>title]"
