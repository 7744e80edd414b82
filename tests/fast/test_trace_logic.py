"""``cdc-bridge trace``'s pure half: queries, merging, consumer states, exit codes, output."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cdc_bridge.cli.trace import build_query
from cdc_bridge.cli.trace_logic import (
    ACKED,
    BEFORE_START,
    DEAD,
    DELIVERED,
    DELIVERED_NO_ACK,
    EXIT_DEAD_LETTERED,
    EXIT_DONE,
    EXIT_IN_FLIGHT,
    EXIT_NOT_FOUND,
    EXIT_UNKNOWN,
    NOT_FOR,
    WAITING,
    ConsumerFacts,
    EventTrace,
    OutboxRow,
    StoredMsg,
    TraceQuery,
    TraceReport,
    classify_consumer,
    dead_letter_matches_table,
    exit_code,
    key_matches,
    merge_events,
    parse_key,
    render_text,
    report_json,
    subject_matches,
    with_ahead,
)
from cdc_bridge.kernel.events import ChangeEvent

SUBJECT = "cdc.erp._.invoices.c"


def body(key: int) -> tuple[str, bytes]:
    ev = ChangeEvent("erp", "invoices", "c", f"invoices:{key}", key={"id": key},
                     after={"id": key}, ts_ms=1_700_000_000_000 + key)
    eid, _, payload = ev.outbox_parts("cdc")
    return eid, payload


def stored(seq: int, key: int = 1, stream: str = "CDC", time_ms: int = 0) -> StoredMsg:
    eid, payload = body(key)
    return StoredMsg(stream, seq, SUBJECT, time_ms or 1_700_000_100_000 + seq,
                     {"Nats-Msg-Id": eid}, payload)


def consumer(**kw: Any) -> ConsumerFacts:
    base: dict[str, Any] = dict(name="billing", filters=("cdc.erp.>",), ack_policy="explicit",
                                deliver_policy="all", created_ms=1, delivered_seq=12,
                                ack_floor_seq=10, num_pending=18, num_ack_pending=2)
    base.update(kw)
    return ConsumerFacts(**base)


def test_subject_matching() -> None:
    assert subject_matches("cdc.>", "cdc.erp._.t.c")
    assert subject_matches("cdc.erp.*.t.*", "cdc.erp._.t.u")
    assert not subject_matches("cdc.erp.*.t.*", "cdc.erp._.t2.u")
    assert not subject_matches("cdc.>", "cdc")
    assert not subject_matches("cdc.erp", "cdc.erp.x")
    assert subject_matches("cdc.erp._.t.c", "cdc.erp._.t.c")


def test_keys_parse_and_match() -> None:
    assert parse_key([]) is None
    assert parse_key(["id=5", "region=eu"]) == {"id": "5", "region": "eu"}
    assert parse_key(['{"id": 5, "ok": true}']) == {"id": "5", "ok": "true"}
    for bad in ("id", "=5", "{nope", "[1]"):
        with pytest.raises(ValueError):
            parse_key([bad])
    assert key_matches({"id": "5"}, {"id": 5})
    assert key_matches({"id": "5"}, {"id": "5", "region": "eu"})  # part of a composite key
    assert not key_matches({"id": "5"}, {"id": 6})
    assert not key_matches({"id": "5"}, None)


def test_query_validation_filters_and_matching() -> None:
    for bad in (dict(), dict(adapter="erp"), dict(table="t"), dict(event_id=" "),
                dict(event_id="x", key={"id": "1"}), dict(adapter="erp", table="t", limit=0)):
        with pytest.raises(ValueError):
            TraceQuery(**bad)  # type: ignore[arg-type]
    q = build_query(None, "erp", "public.orders", None, ("id=1",), False, 20)
    assert (q.schema, q.table) == ("public", "orders")
    assert q.subject_filter("cdc") == "cdc.erp.public.orders.*"
    assert TraceQuery(adapter="erp", table="invoices").subject_filter("cdc") == \
        "cdc.erp.*.invoices.*"
    assert TraceQuery(event_id="x", adapter="erp").subject_filter("cdc") == "cdc.erp.>"
    assert TraceQuery(adapter="erp", table="t", all=True, limit=7).wanted == 7
    assert TraceQuery(adapter="erp", table="t", limit=7).wanted == 1
    eid, payload = body(5)
    q = TraceQuery(adapter="erp", table="invoices", key={"id": "5"})
    assert q.matches("cdc", eid, SUBJECT, payload)
    assert not q.matches("cdc", eid, SUBJECT, body(6)[1])
    assert not q.matches("cdc", eid, "cdc.shop._.invoices.c", payload)
    assert TraceQuery(event_id=eid).matches("cdc", eid, "anything", None)


def test_merge_joins_outbox_stream_and_dead_letters_newest_first() -> None:
    eid1, p1 = body(1)
    eid2, p2 = body(2)
    pending = OutboxRow(7, eid2, SUBJECT, p2, created_ms=1_800_000_000_000)
    published_row = OutboxRow(6, eid1, SUBJECT, p1, created_ms=1_700_000_000_000)
    msg = stored(3, key=1)
    by_consumer = StoredMsg("CDC_DLQ", 1, "cdc_dlq._consumer.billing", 1_700_000_200_000,
                            {"Cdc-Consumer": "billing", "Cdc-Original-Stream": "CDC",
                             "Cdc-Original-Seq": "3", "Cdc-Reason": "boom"})
    unrelated = StoredMsg("CDC_DLQ", 2, "cdc_dlq._consumer.billing", 5,
                          {"Cdc-Consumer": "billing", "Cdc-Original-Id": "other"})
    relay = StoredMsg("CDC_DLQ", 3, "cdc_dlq.erp", 1_700_000_300_000,
                      {"Nats-Msg-Id": "dlq-x", "Cdc-Original-Id": "x",
                       "Cdc-Original-Subject": SUBJECT, "Cdc-Reason": "too large"})
    events = merge_events([published_row, pending], [msg], [by_consumer, unrelated, relay])
    assert [e.id for e in events] == [eid2, "x", eid1]
    assert events[0].outbox == pending and events[0].stored is None
    assert events[2].stored == msg and events[2].outbox == published_row
    assert events[2].dead_letters == [by_consumer]
    assert events[1].subject == SUBJECT and events[1].dead_letters == [relay]
    assert events[2].body.key == {"id": 1}


def test_consumer_states() -> None:
    c = consumer()
    assert classify_consumer(c, stored(5)).state == ACKED
    assert classify_consumer(c, stored(11)).state == DELIVERED
    waiting = classify_consumer(c, stored(20))
    assert waiting.state == WAITING and waiting.in_flight
    # 18 undelivered after 12; 11 of them from 20 on: 7 before it, plus 2 awaiting ack
    counted = with_ahead(waiting, c, 11)
    assert (counted.ahead, counted.undelivered_before) == (9, 7)
    assert classify_consumer(consumer(filters=("cdc.shop.>",)), stored(5)).state == NOT_FOR
    assert classify_consumer(consumer(filters=()), stored(5)).state == ACKED
    assert classify_consumer(consumer(ack_policy="none"), stored(12)).state == DELIVERED_NO_ACK
    assert classify_consumer(consumer(ack_policy="none"), stored(13)).state == WAITING
    late = consumer(deliver_policy="by_start_sequence", opt_start_seq=8)
    assert classify_consumer(late, stored(5)).state == BEFORE_START
    assert classify_consumer(late, stored(9)).state == ACKED
    new = consumer(deliver_policy="new", created_ms=1_700_000_100_006)
    assert classify_consumer(new, stored(5)).state == BEFORE_START
    dl = StoredMsg("CDC_DLQ", 1, "cdc_dlq._consumer.billing", 1,
                   {"Cdc-Consumer": "billing", "Cdc-Reason": "handler failed"})
    dead = classify_consumer(c, stored(5), [dl])
    assert (dead.state, dead.reason) == (DEAD, "handler failed")
    assert classify_consumer(consumer(name="audit"), stored(5), [dl]).state == ACKED


def trace(**kw: Any) -> EventTrace:
    events = merge_events(kw.get("outbox", []), kw.get("stored", []), kw.get("dead", []))
    return EventTrace(events[0], kw.get("consumers", []))


def test_verdicts_and_exit_codes() -> None:
    eid, payload = body(1)
    done = trace(stored=[stored(5)], consumers=[classify_consumer(consumer(), stored(5))])
    flight = trace(stored=[stored(20)], consumers=[classify_consumer(consumer(), stored(20))])
    pending = trace(outbox=[OutboxRow(1, eid, SUBJECT, payload, 1)])
    dl = StoredMsg("CDC_DLQ", 1, "cdc_dlq.erp", 1, {"Nats-Msg-Id": "dlq-" + eid,
                                                    "Cdc-Original-Id": eid})
    dead = trace(dead=[dl])
    assert exit_code([done]) == EXIT_DONE
    assert exit_code([trace(stored=[stored(5)])]) == EXIT_DONE  # no consumers at all
    assert exit_code([done, flight]) == EXIT_IN_FLIGHT
    assert exit_code([pending]) == EXIT_IN_FLIGHT
    assert exit_code([done, flight, dead]) == EXIT_DEAD_LETTERED
    assert exit_code([]) == EXIT_NOT_FOUND
    assert exit_code([], nats_unreachable=True) == EXIT_UNKNOWN
    assert exit_code([pending], nats_unreachable=True) == EXIT_IN_FLIGHT


def test_dead_letters_of_a_table_by_identity_headers() -> None:
    q = TraceQuery(adapter="erp", table="invoices", key={"id": "9"})
    relay = StoredMsg("CDC_DLQ", 1, "cdc_dlq.erp", 1, {
        "Cdc-Original-Id": "x", "Cdc-Adapter": "erp", "Cdc-Table": "invoices",
        "Cdc-Key": '{"id":9}'})
    assert dead_letter_matches_table(q, relay)
    other = StoredMsg("CDC_DLQ", 2, "cdc_dlq.erp", 1, {**relay.headers, "Cdc-Key": '{"id":8}'})
    assert not dead_letter_matches_table(q, other)
    by_consumer = StoredMsg("CDC_DLQ", 3, "cdc_dlq._consumer.b", 1,
                            {**relay.headers, "Cdc-Consumer": "b"})
    assert not dead_letter_matches_table(q, by_consumer)
    assert not dead_letter_matches_table(TraceQuery(event_id="x"), relay)


def test_text_and_json_say_the_same() -> None:
    c = consumer()
    msg = stored(20)
    t = EventTrace(merge_events([], [msg], [])[0],
                   [with_ahead(classify_consumer(c, msg), c, 11),
                    classify_consumer(consumer(name="audit", filters=("cdc.shop.>",)), msg)])
    report = TraceReport(TraceQuery(event_id=msg.msg_id), [t], "CDC")
    text = render_text(report)
    assert f"event {msg.msg_id}  {SUBJECT} op c key {{\"id\":1}}" in text
    assert "source    2023-11-14T22:13:20.001Z  erp position invoices:1" in text
    assert "stored in CDC at sequence 20" in text
    assert "billing: not yet delivered, 9 messages ahead of it (7 undelivered, 2 awaiting" \
        in text
    assert "audit: not for this consumer (filter cdc.shop.>)" in text
    assert "(exit 3)" in text
    data = json.loads(json.dumps(report_json(report)))
    assert data["exit_code"] == EXIT_IN_FLIGHT and data["found"] is True
    ev = data["events"][0]
    assert ev["stream"] == {"name": "CDC", "seq": 20, "time": "2023-11-14T22:15:00.020Z"}
    assert ev["source"]["position"] == "invoices:1"
    assert ev["outbox"]["state"] == "published"
    assert [(c["name"], c["state"], c["ahead"]) for c in ev["consumers"]] == [
        ("billing", WAITING, 9), ("audit", NOT_FOR, None)]
    missing = TraceReport(TraceQuery(event_id="nope"), [], "CDC")
    assert render_text(missing).startswith("not found: event nope")
    down = TraceReport(TraceQuery(event_id="nope"), [], "CDC", nats_unreachable=True)
    assert down.exit_code == EXIT_UNKNOWN and "cannot tell" in render_text(down)
