"""Trace context derived from event ids (pure), its place in bodies and headers, and
the spans the bridge builds from it (handed to an in-memory exporter, no network)."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import orjson
import pytest

from cdc_bridge.client.consumer import decode_event
from cdc_bridge.config import parse_config
from cdc_bridge.kernel.batch import ChangeBatch
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter, RoutedMessage, event_id
from cdc_bridge.kernel.tracecontext import (
    event_traceparent,
    parse_traceparent,
    sampled,
    span_id_of,
    trace_id_of,
    traceparent,
    traceparent_in_body,
    with_traceparent,
)
from cdc_bridge.outbox.writer import encode_batch
from cdc_bridge.relay.settings import TracingConfig


def change(i: int) -> ChangeEvent:
    return ChangeEvent(adapter="erp", table="invoices", op="c", position=f"invoices:{i}",
                       key={"id": i}, after={"id": i, "traceparent": "not ours"},
                       ts_ms=1_700_000_000_000)


def test_traceparent_is_the_event_id_and_a_hash_of_it() -> None:
    eid = event_id("erp", "invoices:1")
    tp = traceparent(eid)
    parsed = parse_traceparent(tp)
    assert parsed is not None and parsed.sampled
    assert parsed.trace_id == eid.replace("-", "") == trace_id_of(eid)
    assert parsed.span_id == span_id_of(eid) and len(parsed.span_id) == 16
    assert tp == f"00-{parsed.trace_id}-{parsed.span_id}-01"
    assert traceparent(eid) == tp and event_traceparent(eid) == tp  # deterministic
    assert span_id_of(event_id("erp", "invoices:2")) != parsed.span_id


def test_the_fast_form_equals_the_general_one() -> None:
    rng = random.Random(7)
    for i in range(300):
        eid = event_id("a", f"p:{i}", i % 3)
        ratio = rng.choice((1.0, 0.5, 0.01, 0.0))
        assert event_traceparent(eid, ratio) == traceparent(eid, ratio)


def test_ids_that_are_not_uuids_get_a_valid_trace_id() -> None:
    for eid in ("order-17", "A1B2C3D4-0000-0000-0000-00000000000F", ""):
        parsed = parse_traceparent(traceparent(eid))
        assert parsed is not None
    assert trace_id_of("A1B2C3D4-0000-0000-0000-00000000000F") == \
        "a1b2c3d4" + "0" * 23 + "f"
    assert trace_id_of("00000000-0000-0000-0000-000000000000") != "0" * 32


@pytest.mark.parametrize("bad", [
    None, "", "00-abc", "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
    "00-" + "a" * 32 + "-" + "0" * 16 + "-01", "ff-" + "a" * 32 + "-" + "1" * 16 + "-01",
    "00-" + "g" * 32 + "-" + "1" * 16 + "-01", "00-" + "a" * 32 + "-" + "1" * 16 + "-01-x"])
def test_invalid_traceparents_are_refused(bad: str | None) -> None:
    assert parse_traceparent(bad) is None


def test_sampling_is_by_the_random_part_of_the_trace_id() -> None:
    ids = [event_id("erp", f"x:{i}").replace("-", "") for i in range(4000)]
    for ratio in (0.0, 0.01, 0.1, 0.5, 0.9, 1.0):
        share = sum(sampled(tid, ratio) for tid in ids) / len(ids)
        assert abs(share - ratio) < 0.03, (ratio, share)
        for tid in ids[:200]:
            assert sampled(tid, ratio) == (int(tid[18:], 16) >= (1 - ratio) * 2**56)
            assert traceparent(tid, ratio).endswith("-01" if sampled(tid, ratio) else "-00")
    # consistent: a trace sampled at one ratio is sampled at every higher one
    assert all(sampled(t, 0.5) for t in ids if sampled(t, 0.1))


def test_the_body_carries_it_as_a_cloudevents_attribute() -> None:
    ev = change(3)
    eid, _, body = ev.outbox_parts("cdc")
    ce = orjson.loads(body)
    assert ce["traceparent"] == traceparent(eid) == ev.traceparent()
    assert traceparent_in_body(body) == ce["traceparent"]  # not the column's value
    assert ev.outbox_parts("cdc") == (eid, _, body)  # a re-read: identical bytes
    _, _, sampled_out = ev.outbox_parts("cdc", 0.0)
    assert orjson.loads(sampled_out)["traceparent"].endswith("-00")


def test_splicing_into_a_json_object() -> None:
    tp = traceparent(str(uuid.uuid4()))
    spliced = with_traceparent(b'{"specversion":"1.0","data":{}}', tp)
    assert json.loads(spliced)["traceparent"] == tp == traceparent_in_body(spliced)
    assert with_traceparent(spliced, traceparent("other")) == spliced
    assert json.loads(with_traceparent(b"{ }", tp)) == {"traceparent": tp}
    assert with_traceparent(b"[1]", tp) == b"[1]"
    assert traceparent_in_body(b'{"traceparent":"nonsense"}') is None


def test_encode_batch_gives_every_kind_of_message_a_traceparent() -> None:
    app_tp = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    routed_given = RoutedMessage("11111111-2222-4333-8444-555555555555", "outbox.order.paid",
                                 b'{"specversion":"1.0","id":"x","data":{"a":1.50}}',
                                 {"Traceparent": app_tp, "X-Other": "1"})
    routed_plain = RoutedMessage("21111111-2222-4333-8444-555555555555", "outbox.order.paid",
                                 b'{"specversion":"1.0","id":"y","data":{}}', None)
    dead = DeadLetter("erp", "file:7", "bad row", b"garbage")
    batch = ChangeBatch(events=[change(1)], messages=[routed_given, routed_plain],
                        dead_letters=[dead], checkpoint=None)
    ev_msg, given, plain, dl = encode_batch(batch, "cdc")
    assert ev_msg.headers is None  # the relay copies the body's value at publish
    assert traceparent_in_body(ev_msg.payload) == traceparent(ev_msg.msg_id)
    assert given.headers == {"X-Other": "1", "traceparent": app_tp}  # the app's trace
    assert traceparent_in_body(given.payload) == app_tp
    assert b'"a":1.50' in given.payload  # the payload's digits untouched
    assert plain.headers == {"traceparent": traceparent(routed_plain.id)}
    assert traceparent_in_body(plain.payload) == traceparent(routed_plain.id)
    assert dl.headers is not None and dl.headers["traceparent"] == traceparent(dead.id)
    assert dl.payload == b"garbage"


def test_the_client_event_exposes_it() -> None:
    ev = change(5)
    body = ev.encode()
    assert decode_event("cdc.erp._.invoices.c", body).traceparent == ev.traceparent()
    other = traceparent("x")
    assert decode_event("s", body, {"traceparent": other}).traceparent == other


def test_tracing_block_and_its_url() -> None:
    cfg = parse_config("tracing: {enabled: true, endpoint: '${OTLP:-http://c:4318}', "
                       "sample_ratio: 0.25}", env={})
    assert cfg.tracing.enabled and cfg.tracing.sample_ratio == 0.25
    assert cfg.tracing.traces_url() == "http://c:4318/v1/traces"
    assert TracingConfig(endpoint="http://c/v1/traces/").traces_url() == "http://c/v1/traces"
    assert not parse_config("{}").tracing.enabled


class _Memory:
    def __init__(self) -> None:
        self.spans: list[Any] = []

    def on_end(self, span: Any) -> None:
        self.spans.append(span)

    def shutdown(self) -> None: ...


def test_spans_of_a_committed_batch_and_of_publishes() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from cdc_bridge.relay.publisher import Slot
    from cdc_bridge.relay.tracing import Tracing

    tracing = Tracing.start(TracingConfig(enabled=True, sample_ratio=0.5), "test")
    assert tracing is not None
    tracing.processor.shutdown()  # type: ignore[no-untyped-call]
    memory = _Memory()
    tracing.processor = memory  # type: ignore[assignment]
    events = [change(i) for i in range(40)]
    batch = ChangeBatch(events=events, checkpoint=None)
    messages = encode_batch(batch, "cdc", 0.5)
    t0 = 1_700_000_001_000 * 10**6  # a second after the source's change
    tracing.committed("erp", batch, messages, t0, t0 + 100_000, t0 + 900_000)
    wanted = {m.msg_id for m in messages if traceparent_in_body(m.payload).endswith("1")}
    assert 0 < len(wanted) < 40
    by_name: dict[str, list[Any]] = {}
    for span in memory.spans:
        by_name.setdefault(span.name, []).append(span)
    captures = by_name["cdc.capture"]
    assert {uuid.UUID(int=s.context.trace_id).hex for s in captures} == \
        {uuid.UUID(m).hex for m in wanted}
    for span in captures:
        tid = uuid.UUID(int=span.context.trace_id)
        assert span.parent is None and f"{span.context.span_id:016x}" == span_id_of(str(tid))
        assert span.start_time == 1_700_000_000_000 * 10**6  # the source's change time
    for span in by_name["cdc.outbox.commit"]:
        tid = uuid.UUID(int=span.context.trace_id)
        assert f"{span.parent.span_id:016x}" == span_id_of(str(tid))
    (batch_span,) = by_name["cdc.capture.batch"]
    assert batch_span.attributes["cdc.batch.events"] == 40
    assert len(batch_span.links) == len(wanted)
    memory.spans.clear()
    for m in messages:
        slot = Slot(1, m)
        slot.traceparent = traceparent_in_body(m.payload) or ""
        tracing.settled(slot, "published")
    tracing.flush_publish()
    publishes = [s for s in memory.spans if s.name == "cdc.publish"]
    assert {str(uuid.UUID(int=s.context.trace_id)) for s in publishes} == wanted
    assert all(s.parent.span_id == int(span_id_of(str(uuid.UUID(int=s.context.trace_id))), 16)
               for s in publishes)
    (pub_batch,) = [s for s in memory.spans if s.name == "cdc.publish.batch"]
    assert pub_batch.attributes["cdc.batch.published"] == 40


def test_tracing_off_imports_nothing() -> None:
    import subprocess
    import sys

    code = ("import sys; from cdc_bridge.relay.tracing import Tracing; "
            "from cdc_bridge.relay.settings import TracingConfig; "
            "import cdc_bridge.client.consumer, cdc_bridge.outbox.writer; "
            "assert Tracing.start(TracingConfig(), 'x') is None; "
            "print(any(m.startswith('opentelemetry') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "False"
