"""Outbox tables relayed by replication (``outbox_tables``): rows -> routed messages. Pure.

An application writes domain events into its outbox table (:mod:`cdc_bridge.client.outbox`) inside
its business transactions. With the table in ``outbox_tables`` the postgres adapter
reads it from the WAL instead of polling it: each *inserted* row becomes one
:class:`~cdc_bridge.kernel.events.RoutedMessage`, built by the same function as ``type:
outbox_table`` uses (:func:`cdc_bridge.adapters.outbox_table.outbox_message`), so a row yields the
same bytes whichever adapter relays it: id = the row's ``id`` (and ``Nats-Msg-Id``),
subject ``outbox.<aggregate_type>.<event_type>`` below the prefix, ``data`` = the
payload's JSON text exactly as the server sends it (numbers keep their digits),
``time`` = ``created_at`` in UTC milliseconds, the row's ``headers`` as NATS headers.

Updates, deletes and truncates of the table are not events (the stream skips them), so
the application may delete each row in the transaction that inserted it (the WAL still
carries the insert) or clean up whenever it likes.

Rows come as text (pgoutput's tuple values, or a snapshot's text result) with their
column names and type OIDs. A row that cannot make a valid message (a missing or empty
``id``, ``aggregate_type`` or ``event_type``, a null ``aggregate_id``, a payload that is
not JSON, headers that are not a JSON object, an unreadable ``created_at``) raises
:class:`OutboxRowError`; the callers turn it into a dead letter.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from cdc_bridge.adapters.outbox_table import outbox_message
from cdc_bridge.kernel.events import RoutedMessage

#: Columns an outbox table must have (``headers`` and ``published_at`` are optional).
OUTBOX_COLUMNS = ("id", "aggregate_type", "aggregate_id", "event_type", "payload",
                  "created_at")

#: ``decode(type_oid, text)``: a column's text form to its JSON-able value
#: (:meth:`cdc_bridge.adapters.postgres.values.ValueDecoder.decode`).
Decode = Callable[[int, str], Any]


class OutboxRowError(ValueError):
    """An outbox row that cannot become a message (it becomes a dead letter)."""


def row_message(adapter: str, names: Sequence[str], type_oids: Sequence[int],
                values: Sequence[Any], decode: Decode) -> RoutedMessage:
    """One outbox row (text values by column) -> its routed message."""
    if len(values) != len(names):
        raise OutboxRowError(f"row has {len(values)} columns, relation has {len(names)}")
    row: dict[str, tuple[int, str | None]] = {}
    for name, oid, value in zip(names, type_oids, values, strict=True):
        if value is None or isinstance(value, str):
            row[name] = (oid, value)
        elif isinstance(value, bytes | bytearray | memoryview):
            row[name] = (oid, bytes(value).decode())
        else:  # an unchanged TOAST value: never in an insert
            row[name] = (oid, None)
    missing = [c for c in OUTBOX_COLUMNS if c not in row]
    if missing:
        raise OutboxRowError(f"no column {', '.join(missing)}")
    event_id = _text(row, "id")
    if not event_id or any(c.isspace() for c in event_id):
        raise OutboxRowError(f"id is {'empty' if not event_id else 'not one token'}")
    aggregate_type = _text(row, "aggregate_type")
    event_type = _text(row, "event_type")
    for what, text in (("aggregate_type", aggregate_type), ("event_type", event_type)):
        if not text:
            raise OutboxRowError(f"{what} is {'null' if text is None else 'empty'}")
    aggregate_id = _text(row, "aggregate_id")
    if aggregate_id is None:
        raise OutboxRowError("aggregate_id is null")
    payload = _text(row, "payload")
    if payload is None:
        raise OutboxRowError("payload is null")
    try:
        json.loads(payload, parse_float=decimal.Decimal, parse_constant=decimal.Decimal)
    except ValueError:  # numbers of any size are JSON (1e400 is a jsonb value)
        raise OutboxRowError("payload is not JSON") from None
    assert event_type is not None and aggregate_type is not None  # checked above
    return outbox_message(adapter, event_id, aggregate_type, aggregate_id, event_type,
                          payload, _headers(row), _created_at(row, decode))


def _text(row: dict[str, tuple[int, str | None]], name: str) -> str | None:
    return row[name][1]


def _headers(row: dict[str, tuple[int, str | None]]) -> dict[str, Any] | None:
    text = row["headers"][1] if "headers" in row else None
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise OutboxRowError("headers is not JSON") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise OutboxRowError("headers is not a JSON object")
    return value


def _created_at(row: dict[str, tuple[int, str | None]], decode: Decode) -> dt.datetime:
    oid, text = row["created_at"]
    if text is None:
        raise OutboxRowError("created_at is null")
    value = decode(oid, text)
    try:
        when = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        when = None
    if when is None:
        raise OutboxRowError(f"created_at {text!r} is not a timestamp")
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)
