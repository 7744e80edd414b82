"""Canonical events: deterministic ids, subject sanitising, CloudEvents wire form."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import orjson
from hypothesis import given
from hypothesis import strategies as st

from cdc_bridge.kernel.events import (
    ChangeEvent,
    DeadLetter,
    change_subject,
    decode_cloudevent,
    event_id,
    subject_token,
)


def test_event_id_is_deterministic_and_distinct() -> None:
    assert event_id("a", "0/16B3748", 0) == event_id("a", "0/16B3748", 0)
    assert event_id("a", "0/16B3748", 0) != event_id("a", "0/16B3748", 1)
    assert event_id("a", "p", 0) != event_id("b", "p", 0)
    # no ambiguity from concatenation
    assert event_id("a", "b:c", 0) != event_id("a:b", "c", 0)


@given(st.text(max_size=40))
def test_subject_tokens_are_safe(value: str) -> None:
    token = subject_token(value)
    assert token
    assert not any(ch in token for ch in ".*> \t\r\n")


def test_subject_scheme() -> None:
    assert change_subject("cdc", "shop", "public", "orders", "c") == "cdc.shop.public.orders.c"
    assert change_subject("cdc", "x", None, "my.table*", "u") == "cdc.x._.my_table_.u"
    assert change_subject("a.b", "x", "s", "t", "d") == "a.b.x.s.t.d"


def test_cloudevent_wire_form() -> None:
    ev = ChangeEvent(
        adapter="shop", schema="public", table="orders", op="u", position="0/1A", index=3,
        key={"id": 7}, before={"id": 7, "total": Decimal("1.10")},
        after={"id": 7, "total": Decimal("12345678901234567890.123456789"),
               "blob": b"\x00\xff", "at": dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)},
        txid=991, ts_ms=1_700_000_000_123, source_extra={"lsn": "0/1A"},
    )
    ce = decode_cloudevent(ev.encode())
    assert ce["id"] == ev.id == event_id("shop", "0/1A", 3)
    assert ce["type"] == "io.cdc-bridge.updated"
    assert ce["subject"] == "public.orders"
    assert ce["time"] == "2023-11-14T22:13:20.123Z"
    assert ce["partitionkey"] == '{"id":7}'
    data = ce["data"]
    assert data["op"] == "u"
    assert data["after"]["total"] == "12345678901234567890.123456789"
    assert data["before"]["total"] == "1.10"
    assert data["after"]["blob"] == "AP8="
    assert data["after"]["at"].startswith("2026-01-02T03:04:05.000006")
    assert data["source"] == {"adapter": "shop", "schema": "public", "table": "orders",
                              "position": "0/1A", "index": 3, "txid": 991,
                              "ts_ms": 1_700_000_000_123, "lsn": "0/1A"}


def test_keyless_partition_key_is_the_table() -> None:
    ev = ChangeEvent(adapter="f", table="rows", op="c", position="x")
    assert ev.partition_key() == "_.rows"


def test_dead_letter_headers_are_single_line() -> None:
    dl = DeadLetter(adapter="files", position="f:10", reason="bad\nnumber\t'x'",
                    payload=b"1,2", context={"file": "a.csv", "line": "10"})
    hdrs = dl.headers()
    assert hdrs["Cdc-Reason"] == "bad number 'x'"
    assert hdrs["Cdc-File"] == "a.csv"
    assert hdrs["Cdc-Line"] == "10"
    assert dl.id != event_id("files", "f:10", 0)


def test_decode_rejects_non_cloudevents() -> None:
    import pytest

    with pytest.raises(ValueError):
        decode_cloudevent(orjson.dumps({"hello": 1}))


@given(st.text(max_size=20), st.text(max_size=40), st.integers(min_value=0, max_value=10**9))
def test_event_id_is_standard_uuid5(adapter: str, position: str, index: int) -> None:
    import uuid

    from cdc_bridge.kernel.events import ID_NAMESPACE

    expected = uuid.uuid5(ID_NAMESPACE, f"{adapter}\x1f{position}\x1f{index}")
    assert event_id(adapter, position, index) == str(expected)
