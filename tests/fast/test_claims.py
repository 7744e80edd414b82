"""Claim checks and dead letters, the pure parts: references, names, digests, headers."""

from __future__ import annotations

import base64
import hashlib

import orjson
import pytest

from cdc_bridge.cli.tail import format_event
from cdc_bridge.client.claims import ClaimCorrupt, ClaimRef, is_claim
from cdc_bridge.client.consumer import decode_event
from cdc_bridge.config import NatsConfig
from cdc_bridge.kernel.events import ChangeEvent
from cdc_bridge.kernel.wire import claim_digest
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.relay.claims import bucket_ttl, object_name, reference_message
from cdc_bridge.relay.rules import dead_letter, headers_size, identity, one_line


def _event(size: int = 5000) -> OutboxMessage:
    ev = ChangeEvent(adapter="erp", table="notes", op="u", position="lsn:42", index=3,
                     schema="public", key={"id": 7, "region": "eu"},
                     after={"id": 7, "body": "x" * size}, ts_ms=1_700_000_000_000)
    eid, subject, body = ev.outbox_parts("cdc")
    return OutboxMessage(eid, subject, body, {"Trace-Id": "t1"}, 5)


def test_a_reference_keeps_id_subject_order_key_and_names_the_object() -> None:
    msg = _event()
    ref = reference_message(msg, "CDC_CLAIMS")
    assert (ref.msg_id, ref.subject, ref.created_ms) == (msg.msg_id, msg.subject, 5)
    assert ref.headers == {"Trace-Id": "t1", "Cdc-Claim-Bucket": "CDC_CLAIMS",
                           "Cdc-Claim-Object": msg.msg_id,
                           "Cdc-Claim-Size": str(len(msg.payload)),
                           "Cdc-Claim-Digest": claim_digest(msg.payload)}
    body = orjson.loads(ref.payload)
    assert len(ref.payload) < 1000
    assert body["data"] == {"op": "u", "key": {"id": 7, "region": "eu"},
                            "source": orjson.loads(msg.payload)["data"]["source"]}
    assert (body["id"], body["claimobject"], body["claimsize"]) == (
        msg.msg_id, msg.msg_id, len(msg.payload))
    # the consumer orders the reference exactly as the event it stands for
    assert decode_event(ref.subject, ref.payload).order_key == \
        decode_event(msg.subject, msg.payload).order_key
    assert is_claim(ref.headers) and not is_claim(msg.headers)
    assert ClaimRef.of(ref.headers) == ClaimRef("CDC_CLAIMS", msg.msg_id, len(msg.payload),
                                                claim_digest(msg.payload))


def test_a_reference_of_a_body_that_is_not_an_event() -> None:
    ref = reference_message(OutboxMessage("r-1", "cdc.outbox.a.b", b"\x00" * 10), "B")
    assert orjson.loads(ref.payload) == {
        "id": "r-1", "subject": "cdc.outbox.a.b", "claimbucket": "B", "claimobject": "r-1",
        "claimsize": 10, "claimdigest": claim_digest(b"\x00" * 10)}


def test_object_names_are_deterministic_and_safe() -> None:
    assert object_name("8f0c3b8e-2a55-5c1e-9d3e-6b1f1c0ad5e1") == \
        "8f0c3b8e-2a55-5c1e-9d3e-6b1f1c0ad5e1"
    odd = object_name("order 17/paid*")
    assert odd == object_name("order 17/paid*") and odd.startswith("id-") and " " not in odd


def test_the_digest_is_the_object_stores_own_format() -> None:
    raw = hashlib.sha256(b"abc").digest()
    assert claim_digest(b"abc") == "SHA-256=" + base64.urlsafe_b64encode(raw).decode()


def test_incomplete_claim_headers_are_corrupt() -> None:
    with pytest.raises(ClaimCorrupt):
        ClaimRef.of({"Cdc-Claim-Object": "x", "Cdc-Claim-Size": "many"})
    assert ClaimRef.of({"Other": "1"}) is None and ClaimRef.of(None) is None


def test_claim_settings_default_to_a_bucket_beside_the_stream() -> None:
    cfg = NatsConfig.model_validate({"stream": "ORDERS", "max_age": "7d"})
    assert cfg.claim_checks.enabled and cfg.claims_bucket() == "ORDERS_CLAIMS"
    assert bucket_ttl(cfg) == 7 * 86400 + cfg.duplicate_window
    assert bucket_ttl(NatsConfig()) is None  # the stream keeps events for ever
    named = NatsConfig.model_validate({"claim_checks": {"bucket": "BIG", "enabled": False}})
    assert named.claims_bucket() == "BIG" and not named.claim_checks.enabled


def test_dead_letters_say_what_the_event_was_and_fit() -> None:
    msg = _event(2_000_000)
    subject, body, headers = dead_letter(msg.msg_id, msg.subject, msg.payload, msg.headers,
                                         "too\nlarge", prefix="cdc", dlq="_dlq", limit=1 << 20)
    assert subject == "cdc_dlq.erp" and body == b""
    assert {k: headers[k] for k in ("Cdc-Adapter", "Cdc-Schema", "Cdc-Table", "Cdc-Key",
                                    "Cdc-Position", "Cdc-Reason", "Trace-Id")} == {
        "Cdc-Adapter": "erp", "Cdc-Schema": "public", "Cdc-Table": "notes",
        "Cdc-Key": '{"id":7,"region":"eu"}', "Cdc-Position": "lsn:42#3",
        "Cdc-Reason": "too large", "Trace-Id": "t1"}
    assert headers["Cdc-Original-Size"] == str(len(msg.payload)) and "Cdc-Body-Dropped" in headers
    # a tiny limit: the original's own headers go first, ours are cut, all of it fits
    _, _, small = dead_letter(msg.msg_id, msg.subject, msg.payload,
                              {"Big": "h" * 900}, "r" * 5000, prefix="cdc", dlq="_dlq",
                              limit=1200)
    assert "Big" not in small and headers_size(small) < 1200 and "Cdc-Key" in small


def test_a_dead_letter_of_a_dead_letter_keeps_its_subject_and_reason() -> None:
    record = b"r" * 5000
    subject, body, headers = dead_letter(
        "dl-1", "cdc_dlq.exports", record, {"Cdc-Reason": "record longer than 4 bytes",
                                            "Cdc-Position": "f@0"},
        "message of 5000 bytes exceeds max_payload", prefix="cdc", dlq="_dlq", limit=2000)
    assert subject == "cdc_dlq.exports"
    assert headers["Cdc-Reason"] == "record longer than 4 bytes"
    assert headers["Cdc-Position"] == "f@0"
    assert "max_payload" in headers["Cdc-Body-Truncated"]
    assert 0 < len(body) < 2000 and record.startswith(body)
    assert len(body) + headers_size(headers) <= 2000


def test_identity_from_the_subject_when_the_body_is_opaque() -> None:
    assert identity("cdc.erp.public.notes.c", b"\x00", "cdc") == {
        "Cdc-Adapter": "erp", "Cdc-Schema": "public", "Cdc-Table": "notes"}
    assert identity("cdc.outbox.order.paid", b"{}", "cdc") == {"Cdc-Adapter": "outbox"}
    assert one_line("a\r\nb  c", 100) == "a b c"
    assert one_line("é" * 100, 11) == "éééé..."


def test_tail_shows_where_a_large_event_is() -> None:
    msg = _event()
    ref = reference_message(msg, "CDC_CLAIMS")
    line = format_event(ref.subject, ref.payload, 3, claim=ClaimRef.of(ref.headers))
    assert "op=u" in line and '"region":"eu"' in line
    assert f"[claim check CDC_CLAIMS/{msg.msg_id} ({len(msg.payload)} bytes)]" in line
