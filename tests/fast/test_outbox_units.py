"""Pure delivery rules (cdc_bridge.relay.rules), the window validation, the outbox-table row
mapping, and the ``cdc-bridge outbox`` command on a real SQLite store."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cdc_bridge.adapters.registry  # noqa: F401 - load the registry before an adapter module
from cdc_bridge.adapters.outbox_table import to_message
from cdc_bridge.config import parse_config
from cdc_bridge.kernel.errors import ConfigError
from cdc_bridge.relay.rules import (
    DUPLICATE,
    OK,
    POISON,
    RETRY,
    dead_letter,
    dlq_token,
    parse_ack,
    precheck,
    subject_matches,
    valid_subject,
)


@pytest.mark.parametrize(("pattern", "subject", "ok"), [
    ("cdc.>", "cdc.a", True), ("cdc.>", "cdc.a.b.c", True), ("cdc.>", "cdc", False),
    ("cdc.*.x", "cdc.a.x", True), ("cdc.*.x", "cdc.a.b.x", False), ("a.b", "a.b", True),
    ("a.b", "a.c", False), ("a.*", "a", False),
])
def test_subject_matches(pattern: str, subject: str, ok: bool) -> None:
    assert subject_matches(pattern, subject) is ok


@given(st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), min_size=1, max_size=6))
def test_every_prefixed_valid_subject_matches_the_stream(tokens: list[str]) -> None:
    subject = "cdc." + ".".join(tokens)
    assert valid_subject(subject)
    assert subject_matches("cdc.>", subject)


@pytest.mark.parametrize("subject", ["", "cdc..a", "cdc.a ", "cdc.*", "cdc.>", "cdc.a\r\nb",
                                     "cdc.a.>.b", ".cdc"])
def test_invalid_subjects(subject: str) -> None:
    assert not valid_subject(subject)


def test_precheck_reasons() -> None:
    kw: dict[str, Any] = {"max_payload": 1000, "stream_subjects": ["cdc.>"],
                          "max_msg_size": 500}
    assert precheck("cdc.a.b", 400, **kw) is None
    assert "max_msg_size" in (precheck("cdc.a.b", 600, **kw) or "")
    assert "max_payload" in (precheck("cdc.a.b", 1001, **kw) or "")
    assert "not bound" in (precheck("x.a.b", 10, **kw) or "")
    assert "invalid subject" in (precheck("cdc.a b", 10, **kw) or "")


def test_parse_ack_outcomes() -> None:
    assert parse_ack(b'{"stream":"CDC","seq":7}', None, "CDC").outcome == OK
    dup = parse_ack(b'{"stream":"CDC","seq":7,"duplicate":true}', None, "CDC")
    assert (dup.outcome, dup.seq) == (DUPLICATE, 7)
    assert parse_ack(b"", "503", "CDC").outcome == RETRY
    assert parse_ack(b'{"stream":"OTHER","seq":1}', None, "CDC").outcome == POISON
    too_big = b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds"}}'
    assert parse_ack(too_big, None, "CDC").outcome == POISON
    full = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'
    assert parse_ack(full, None, "CDC").outcome == RETRY  # back-pressure, not poison
    assert parse_ack(b"garbage", None, "CDC").outcome == RETRY


def test_dead_letter_shape() -> None:
    subject, body, headers = dead_letter(
        "abc", "cdc.erp._.t.c", b"x" * 100, {"Cdc-K": "1", "Nats-Msg-Id": "abc"},
        "too\nbig", prefix="cdc", dlq="_dlq", limit=1000)
    assert subject == "cdc_dlq.erp"
    assert body == b"x" * 100
    assert headers["Nats-Msg-Id"] == "dlq-abc"
    assert headers["Cdc-Reason"] == "too big"
    assert headers["Cdc-K"] == "1"
    _, body, _ = dead_letter("abc", "cdc.erp._.t.c", b"x" * 2000, None, "r", prefix="cdc",
                             dlq="_dlq", limit=1000)
    assert body == b""
    assert dlq_token("elsewhere.x", "cdc") == "_unknown"


def test_duplicate_window_must_cover_the_retry_horizon() -> None:
    with pytest.raises(ConfigError, match="duplicate_window"):
        parse_config("nats: {duplicate_window: 20s, ack_timeout: 10s, retry_max: 5s}")
    cfg = parse_config("nats: {duplicate_window: 30s, ack_timeout: 10s, retry_max: 5s}")
    assert cfg.nats.duplicate_window == 30.0


def test_outbox_table_row_to_message() -> None:
    created = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    row = (5, "6b1f1c0a-d5e1-4c1e-9d3e-8f0c3b8e2a55", "Order Line", "17", "added.v2",
           '{"n": 1.50}', {"Trace-Id": "t", "bad key": "x", "Nats-Msg-Id": "forged"}, created)
    msg = to_message(row, "app")
    assert msg.subject == "outbox.Order_Line.added_v2"
    assert msg.id == "6b1f1c0a-d5e1-4c1e-9d3e-8f0c3b8e2a55"
    assert msg.headers == {"Trace-Id": "t"}
    ce = orjson.loads(msg.body)
    assert ce["data"] == {"n": 1.50} and b'"data":{"n": 1.50}' in msg.body  # verbatim
    assert ce["time"] == "2026-01-02T03:04:05.678Z"
    assert (ce["type"], ce["subject"], ce["aggregatetype"]) == ("added.v2", "17", "Order Line")
