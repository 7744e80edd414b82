"""Canonical change events and their wire form.

Every adapter describes a change as one :class:`ChangeEvent`. The wire form is a
CloudEvents 1.0 JSON object in structured mode whose ``data`` follows Debezium's
envelope (``op``, ``before``, ``after``, ``key``, ``source``), so consumers written for
Debezium can move over with little work.

The event id is deterministic: a UUIDv5 of adapter, source position and index inside
that position. The same change read twice from the same position (after a crash,
before its checkpoint was committed) gets the same id, which is also the
``Nats-Msg-Id`` header, so JetStream's duplicate window drops the second copy. (A
snapshot row read again from a *newer* snapshot is a new reading, with a new position:
the postgres source numbers snapshot attempts for that reason; only committed copies
ever reach the outbox.)

Everything here is pure: no I/O, no clock except the ``ts_ms`` the adapter passes in.

Speed. Encoding runs once per change on the capture path, so it is written for it:
:meth:`ChangeEvent.outbox_parts` computes the id once (``encode`` alone would compute it
again for the body), subjects and the per-adapter/per-table strings are cached, and the
id is a uuid5 formatted straight from the SHA-1 hex digest. Every event carries a W3C
``traceparent`` derived from its id (:mod:`cdc_bridge.kernel.tracecontext`). The bytes
produced are the same as the plain, readable definitions (``to_cloudevent`` +
``dumps``); the tests check both against each other and against ``uuid.uuid5``.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from cdc_bridge.kernel.shapes import TableShape
from cdc_bridge.kernel.tracecontext import event_traceparent

#: An event's schema as the writer resolved it: ``(dataschema URI, version)``.
SchemaRef = tuple[str, int]

Op = Literal["c", "u", "d", "r", "t"]
OPS: tuple[Op, ...] = ("c", "u", "d", "r", "t")
OP_NAMES: dict[str, str] = {
    "c": "created",
    "u": "updated",
    "d": "deleted",
    "r": "read",
    "t": "truncated",
}

#: Subject token used for sources that have no schema (files, SQLite).
NO_SCHEMA = "_"
#: Stands for an unchanged TOASTed column value PostgreSQL did not send (never ``null``,
#: which would be a lie): any column of an update's ``after`` may hold it.
UNCHANGED_TOAST_PLACEHOLDER = "__cdc_bridge_unchanged_toast__"
#: Namespace of every event id (a fixed, project-specific UUID).
ID_NAMESPACE = uuid.UUID("8f0c3b8e-2a55-4c1e-9d3e-6b1f1c0ad5e1")
#: Suffix of the dead-letter prefix: dead letters go to ``<prefix>_dlq.<adapter>`` (and
#: consumers' to ``<prefix>_dlq._consumer.<durable>``), a subject space of their own
#: outside ``<prefix>.>``, stored in a stream of their own (:func:`dead_letter_stream`),
#: so no ``<prefix>.>`` subscriber and no replay ever receives them. (Before 0.2 they
#: were ``<prefix>._dlq.<adapter>`` inside the main stream: :data:`LEGACY_DLQ_TOKEN`.)
DLQ_TOKEN = "_dlq"
#: The token of the old, in-stream dead letters (``<prefix>._dlq.<adapter>``).
LEGACY_DLQ_TOKEN = "_dlq"
EVENT_TYPE_PREFIX = "io.cdc-bridge."

_TOKEN_BAD = re.compile(r"[^A-Za-z0-9_\-]")


def subject_token(value: str | None) -> str:
    """Make ``value`` safe as one NATS subject token.

    Dots, wildcards (``*``, ``>``), whitespace and anything outside ``[A-Za-z0-9_-]``
    become ``_``; an empty or missing value becomes :data:`NO_SCHEMA`.
    """
    if not value:
        return NO_SCHEMA
    return _TOKEN_BAD.sub("_", value)


_NS_BYTES = ID_NAMESPACE.bytes
_SHA1 = hashlib.sha1
#: The RFC 4122 variant nibble (``10xx``) for each hex digit of the digest.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def event_id(adapter: str, position: str, index: int = 0) -> str:
    """Deterministic id of the change at ``position`` (``index``-th inside it).

    Exactly ``uuid.uuid5(ID_NAMESPACE, "<adapter>\\x1f<position>\\x1f<index>")``, computed
    without building UUID objects (this is on the hot path of every event): the version
    nibble becomes ``5`` and the variant's top bits ``10``, straight on the hex digest.
    """
    h = _SHA1(_NS_BYTES + f"{adapter}\x1f{position}\x1f{index}".encode(),
              usedforsecurity=False).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


@functools.lru_cache(maxsize=4096)
def change_subject(prefix: str, adapter: str, schema: str | None, table: str, op: str) -> str:
    """``<prefix>.<adapter>.<schema>.<table>.<op>`` with every token sanitised (cached)."""
    return ".".join(
        (prefix, subject_token(adapter), subject_token(schema), subject_token(table), op)
    )


def dead_letter_prefix(prefix: str) -> str:
    """The subject prefix of every dead letter of ``prefix``: ``<prefix>_dlq``."""
    return f"{prefix}{DLQ_TOKEN}"


def dead_letter_subject(prefix: str, adapter: str) -> str:
    """Where an adapter's undeliverable or malformed input goes: ``<prefix>_dlq.<adapter>``."""
    return f"{dead_letter_prefix(prefix)}.{subject_token(adapter)}"


def dead_letter_stream(stream: str) -> str:
    """The stream that keeps the dead letters of ``stream``: ``<STREAM>_DLQ``."""
    return f"{stream}_DLQ"


#: JSON has no NaN or infinities: every source writes them as these strings (never
#: ``null``, which would read as a missing value).
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def non_finite_text(value: float) -> str:
    """``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` for a float that is not finite."""
    return _NON_FINITE[str(value)]


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return str(value)  # exact: never through float
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def dumps(value: Any) -> bytes:
    """JSON-encode with the bridge's type rules (Decimal as string, bytes as base64)."""
    return orjson.dumps(
        value,
        default=_json_default,
        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_UTC_Z,
    )


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change of one row (or a truncate of one table) at one source position."""

    adapter: str
    table: str
    op: Op
    position: str
    index: int = 0
    schema: str | None = None
    key: Mapping[str, Any] | None = None
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    txid: str | int | None = None
    ts_ms: int | None = None
    #: Source-specific extras merged into ``data.source`` (lsn, file, line, ...).
    source_extra: Mapping[str, Any] = field(default_factory=dict)
    #: The table's look when this change was made (:mod:`cdc_bridge.kernel.schemas`);
    #: the same object for every row until the look changes. ``None``: not described.
    shape: TableShape | None = None

    @property
    def id(self) -> str:
        return event_id(self.adapter, self.position, self.index)

    def subject(self, prefix: str) -> str:
        return change_subject(prefix, self.adapter, self.schema, self.table, self.op)

    def partition_key(self) -> str:
        """Stable string of the key (or the table for keyless sources): order is per this."""
        key = self.key
        if key:
            if len(key) == 1:  # the common case: nothing to sort
                return dumps(key if type(key) is dict else dict(key)).decode()
            return dumps(dict(sorted(key.items()))).decode()
        return f"{self.schema or NO_SCHEMA}.{self.table}"

    def data(self, schema: SchemaRef | None = None) -> dict[str, Any]:
        source: dict[str, Any] = {
            "adapter": self.adapter,
            "schema": self.schema,
            "table": self.table,
            "position": self.position,
            "index": self.index,
            "txid": self.txid,
            "ts_ms": self.ts_ms,
        }
        source.update(self.source_extra)
        if schema is not None:
            source["schema_version"] = schema[1]
        return {
            "op": self.op,
            "before": self.before,
            "after": self.after,
            "key": self.key,
            "source": source,
        }

    def traceparent(self, sample_ratio: float = 1.0) -> str:
        """This event's W3C ``traceparent`` (:mod:`cdc_bridge.kernel.tracecontext`)."""
        return event_traceparent(self.id, sample_ratio)

    def to_cloudevent(self, event_id_: str | None = None, sample_ratio: float = 1.0,
                      schema: SchemaRef | None = None) -> dict[str, Any]:
        """The CloudEvent as a dict (``event_id_``: the id when the caller has it already;
        ``sample_ratio``: the tracing sample ratio, which decides the traceparent's flags;
        ``schema``: the registry version of the table's look, as ``dataschema`` and
        ``data.source.schema_version``)."""
        eid = event_id_ or self.id
        ce: dict[str, Any] = {
            "specversion": "1.0",
            "id": eid,
            "traceparent": event_traceparent(eid, sample_ratio),
            "source": _ce_source(self.adapter),
            "type": _CE_TYPES[self.op],
            "subject": _ce_subject(self.schema, self.table),
            "datacontenttype": "application/json",
            "partitionkey": self.partition_key(),
            "data": self.data(schema),
        }
        if schema is not None:
            ce["dataschema"] = schema[0]
        if self.ts_ms is not None:
            ce["time"] = _iso_ms(self.ts_ms)
        return ce

    def encode(self) -> bytes:
        """The message body: CloudEvents structured-mode JSON."""
        return dumps(self.to_cloudevent())

    def outbox_parts(self, prefix: str, sample_ratio: float = 1.0,
                     schema: SchemaRef | None = None) -> tuple[str, str, bytes]:
        """``(id, subject, body)`` of this event's message, the id computed once."""
        eid = event_id(self.adapter, self.position, self.index)
        subject = change_subject(prefix, self.adapter, self.schema, self.table, self.op)
        return eid, subject, dumps(self.to_cloudevent(eid, sample_ratio, schema))


_CE_TYPES: dict[str, str] = {op: EVENT_TYPE_PREFIX + name for op, name in OP_NAMES.items()}


@functools.lru_cache(maxsize=1024)
def _ce_source(adapter: str) -> str:
    return f"/cdc-bridge/{adapter}"


@functools.lru_cache(maxsize=4096)
def _ce_subject(schema: str | None, table: str) -> str:
    return f"{schema or NO_SCHEMA}.{table}"


@functools.lru_cache(maxsize=4096)
def _iso_ms(ts_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input an adapter could not turn into an event: kept, with its reason, never dropped.

    ``position`` makes the dead letter's id deterministic like an event's, so a re-read
    after a crash does not publish it twice.
    """

    adapter: str
    position: str
    reason: str
    payload: bytes
    index: int = 0
    context: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return event_id(self.adapter, "dlq:" + self.position, self.index)

    def headers(self) -> dict[str, str]:
        hdrs = {f"Cdc-{k.replace('_', '-').title()}": str(v) for k, v in self.context.items()}
        hdrs["Cdc-Reason"] = _header_safe(self.reason)
        hdrs["Cdc-Adapter"] = self.adapter
        hdrs["Cdc-Position"] = _header_safe(self.position)
        return hdrs


@dataclass(frozen=True, slots=True)
class RoutedMessage:
    """A message whose subject the adapter chooses (the outbox-table router's events).

    ``subject`` is relative to the subject prefix (``outbox.<aggregate>.<type>``);
    ``body`` is final; ``id`` is deterministic (the ``Nats-Msg-Id``).
    """

    id: str
    subject: str
    body: bytes
    headers: Mapping[str, str] | None = None


def _header_safe(text: str, limit: int = 1024) -> str:
    """Header values are one line of printable text."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def decode_cloudevent(body: bytes) -> dict[str, Any]:
    """Parse a message body produced by :meth:`ChangeEvent.encode`."""
    value = orjson.loads(body)
    if not isinstance(value, dict) or value.get("specversion") != "1.0":
        raise ValueError("not a CloudEvents 1.0 structured JSON object")
    return value
