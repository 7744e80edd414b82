"""Events as a subscriber sees them: :class:`Event` and the decoding of message bodies.

The bridge publishes CloudEvents 1.0 in structured JSON mode. A change event's ``data``
is the envelope ``{op, before, after, key, source}``; a schema-change event (type
:data:`~cdc_bridge.kernel.schemas.SCHEMA_EVENT_TYPE`, subject
``<prefix>._schema.<adapter>.<schema>.<table>``) has ``data`` = ``{adapter, schema,
table, old_version, new_version, verdict, diff, registry, entry}`` and decodes to an
:class:`Event` whose ``op`` is :data:`SCHEMA_OP` and whose ``data`` holds all of that.

Pure: no NATS, no database.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from cdc_bridge.kernel.events import dumps
from cdc_bridge.kernel.schemas import SCHEMA_EVENT_TYPE, table_ref
from cdc_bridge.kernel.wire import REPLAY_SEQ, TRACEPARENT

#: ``Event.op`` of a schema-change event (never a row change).
SCHEMA_OP = "schema"
_ROW_OPS = ("c", "u", "d", "r", "t")


@dataclass(frozen=True, slots=True)
class Event:
    """One change, as a subscriber sees it."""

    id: str
    subject: str
    op: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    key: Mapping[str, Any] | None
    source: Mapping[str, Any]
    time: dt.datetime | None
    type: str = ""
    #: Original stream sequence (from ``Cdc-Replay-Seq`` for replayed events).
    sequence: int = 0
    #: How many times this message has been delivered (1 on the first delivery).
    deliveries: int = 1
    headers: Mapping[str, str] = field(default_factory=dict)
    #: What order is kept per: ``<adapter>/<schema>/<table>|<row key>`` (the table alone
    #: for keyless tables, truncates and schema-change events).
    order_key: str = ""
    #: The W3C trace context the bridge gave the event (header, else body attribute):
    #: the handler runs in a span under it (:mod:`cdc_bridge.client.tracing`).
    traceparent: str | None = None
    #: The CloudEvents ``dataschema``: ``nats-kv://<bucket>/<key>`` of the registry
    #: version the row images follow (``None``: the source does not describe the table).
    dataschema: str | None = None
    #: The CloudEvent's whole ``data`` (for a schema-change event: versions, verdict,
    #: diff and the new registry entry).
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def adapter(self) -> str:
        return str(self.source.get("adapter", ""))

    @property
    def table(self) -> str:
        return str(self.source.get("table", ""))

    @property
    def schema(self) -> str | None:
        value = self.source.get("schema")
        return None if value is None else str(value)

    @property
    def table_ref(self) -> str:
        """``<schema>.<table>`` (``_`` for a source without schemas), as upcasters name it."""
        return table_ref(self.schema, self.table)

    @property
    def schema_version(self) -> int | None:
        """The registry version of the row images (for a schema-change event: the new one)."""
        value = self.source.get("schema_version")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def is_schema_change(self) -> bool:
        return self.op == SCHEMA_OP

    @property
    def row(self) -> Mapping[str, Any] | None:
        """The row image that describes the result: ``after``, or ``before`` for deletes."""
        return self.before if self.op == "d" else self.after


def _source(ce: Mapping[str, Any], data: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data.source``; for a schema-change event, built from its table and new version."""
    if ce.get("type") == SCHEMA_EVENT_TYPE:
        return {"adapter": data.get("adapter"), "schema": data.get("schema"),
                "table": data.get("table"), "schema_version": data.get("new_version")}
    src = data.get("source")
    return src if isinstance(src, dict) else {}


def _order_key(ce: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    src = _source(ce, data)
    table = f"{src.get('adapter', '')}/{src.get('schema') or '_'}/{src.get('table', '')}"
    part = ce.get("partitionkey")
    if not isinstance(part, str):
        key = data.get("key")
        part = dumps(dict(sorted(key.items()))).decode() if isinstance(key, dict) and key \
            else "*"
    return f"{table}|{part}"


def order_key_of(body: bytes) -> str | None:
    """The order key of a message body, ``None`` if it is not a change event."""
    try:
        ce = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    data = ce.get("data") if isinstance(ce, dict) else None
    if not isinstance(data, dict) or ce.get("specversion") != "1.0":
        return None
    return _order_key(ce, data)


def decode_event(subject: str, body: bytes, headers: Mapping[str, str] | None = None,
                 sequence: int = 0, deliveries: int = 1) -> Event:
    """Decode a CloudEvents body produced by the bridge; ``ValueError`` if it is not one."""
    try:
        ce = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"body is not JSON: {e}") from None
    return event_of(subject, ce, headers, sequence, deliveries)


def event_of(subject: str, ce: Any, headers: Mapping[str, str] | None = None,
             sequence: int = 0, deliveries: int = 1) -> Event:
    """The :class:`Event` of a decoded CloudEvent (a dict); ``ValueError`` if it is not one."""
    if not isinstance(ce, dict) or ce.get("specversion") != "1.0":
        raise ValueError("body is not a CloudEvents 1.0 structured JSON object")
    data = ce.get("data")
    schema_change = ce.get("type") == SCHEMA_EVENT_TYPE
    if not isinstance(data, dict) or not (schema_change or data.get("op") in _ROW_OPS):
        raise ValueError("data is not a change envelope with op c/u/d/r/t")
    hdrs = dict(headers or {})
    if REPLAY_SEQ in hdrs:
        with contextlib.suppress(ValueError):
            sequence = int(hdrs[REPLAY_SEQ])
    when = None
    if isinstance(ce.get("time"), str):
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(ce["time"].replace("Z", "+00:00"))
    return Event(id=str(ce.get("id", "")), subject=subject,
                 op=SCHEMA_OP if schema_change else data["op"],
                 before=None if schema_change else data.get("before"),
                 after=None if schema_change else data.get("after"),
                 key=None if schema_change else data.get("key"),
                 source=_source(ce, data), time=when, type=str(ce.get("type", "")),
                 sequence=sequence, deliveries=deliveries, headers=hdrs,
                 order_key=_order_key(ce, data),
                 traceparent=hdrs.get(TRACEPARENT) or _str_or_none(ce.get(TRACEPARENT)),
                 dataschema=_str_or_none(ce.get("dataschema")), data=data)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
