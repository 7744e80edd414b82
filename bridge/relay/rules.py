"""Pure delivery rules of the relay: what may be published, what a PubAck means, and
what a dead letter looks like. No I/O here, so all of it is unit-tested directly.

Poison (a message no retry can deliver) is decided in two places:

- before sending (:func:`precheck`): an invalid subject (empty token, whitespace,
  wildcard), a subject outside every subject of the stream (JetStream would answer
  "no responders", which is also what an unavailable stream answers, so the relay must
  not wait for that), or a message larger than the server's ``max_payload`` (the
  server would close the connection) or the stream's ``max_msg_size``;
- from the PubAck (:func:`parse_ack`): JetStream API errors in :data:`POISON_ERR_CODES`.

Everything else that fails (timeouts, "no responders" for a subject the stream does
cover, a full stream with ``discard: new``, connection loss) is transient: retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from cdc_bridge.kernel.schemas import SCHEMA_TOKEN
from cdc_bridge.kernel.tracecontext import TRACEPARENT, traceparent, traceparent_in_body
from cdc_bridge.kernel.wire import (
    ADAPTER,
    BODY_DROPPED,
    BODY_TRUNCATED,
    KEY,
    MSG_ID,
    ORIGINAL_ID,
    ORIGINAL_SIZE,
    ORIGINAL_SUBJECT,
    POSITION,
    REASON,
    SCHEMA,
    TABLE,
)

#: JetStream API error codes that retrying the same message cannot fix.
POISON_ERR_CODES = frozenset({
    10054,  # message size exceeds maximum allowed (stream max_msg_size)
    10060,  # expected stream does not match
    10097,  # header size exceeds maximum allowed
})
_HDR_OVERHEAD = len(b"NATS/1.0\r\n\r\n")


def valid_subject(subject: str) -> bool:
    """A subject one may publish to: dot-separated, non-empty tokens, no wildcards/space."""
    if not subject or len(subject) > 4096:
        return False
    for token in subject.split("."):
        if not token or token in ("*", ">"):
            return False
    return not any(c.isspace() or c in "*>" for c in subject)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` is one token, a final ``>`` one or more tokens."""
    pts = pattern.split(".")
    sts = subject.split(".")
    for i, p in enumerate(pts):
        if p == ">":
            return len(sts) > i
        if i >= len(sts) or (p != "*" and p != sts[i]):
            return False
    return len(pts) == len(sts)


def headers_size(headers: dict[str, str]) -> int:
    return _HDR_OVERHEAD + sum(len(k) + len(v) + 4 for k, v in headers.items())


def precheck(subject: str, size: int, *, max_payload: int, stream_subjects: list[str],
             max_msg_size: int) -> str | None:
    """The poison reason for a message of ``size`` bytes (body + headers), or ``None``."""
    if not valid_subject(subject):
        return f"invalid subject {subject!r}"
    if stream_subjects and not any(subject_matches(p, subject) for p in stream_subjects):
        return f"subject {subject!r} is not bound to the stream (subjects {stream_subjects})"
    if size > max_payload:
        return f"message of {size} bytes exceeds the server's max_payload of {max_payload}"
    if max_msg_size > 0 and size > max_msg_size:
        return f"message of {size} bytes exceeds the stream's max_msg_size of {max_msg_size}"
    return None


#: Outcomes of one publish.
OK, DUPLICATE, POISON, RETRY = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class AckResult:
    outcome: int
    stream: str = ""
    seq: int = 0
    reason: str = ""


def parse_ack(data: bytes, status: str | None, expected_stream: str) -> AckResult:
    """Interpret a JetStream PubAck reply (body and ``Status`` header)."""
    if status == "503":
        return AckResult(RETRY, reason="no responders: JetStream stream unavailable")
    try:
        body: dict[str, Any] = orjson.loads(data)
    except orjson.JSONDecodeError:
        return AckResult(RETRY, reason=f"unreadable PubAck {data[:80]!r}")
    err = body.get("error")
    if err:
        code = int(err.get("err_code") or 0)
        reason = f"JetStream error {code}: {err.get('description', '')}"
        return AckResult(POISON if code in POISON_ERR_CODES else RETRY, reason=reason)
    stream = body.get("stream", "")
    if stream not in (expected_stream, f"{expected_stream}_DLQ"):  # dead letters' stream
        return AckResult(POISON, stream, int(body.get("seq", 0)),
                         f"stored in stream {stream!r}, not {expected_stream!r}")
    return AckResult(DUPLICATE if body.get("duplicate") else OK, stream, int(body["seq"]))


#: JetStream's error code for a publish whose ``Nats-Expected-Last-Sequence`` does not hold.
WRONG_LAST_SEQUENCE = 10071


def is_wrong_last_sequence(reason: str) -> bool:
    """Whether a failed publish's reason (from :func:`parse_ack`) is a chain refusal."""
    return reason.startswith(f"JetStream error {WRONG_LAST_SEQUENCE}:")


def dlq_token(subject: str, prefix: str) -> str:
    """The adapter token of ``subject`` (the one after the prefix; after ``_schema`` for a
    schema-change event), for its DLQ subject and its metrics."""
    head = prefix + "."
    if subject.startswith(head):
        tokens = subject[len(head):].split(".", 2)
        token = tokens[1] if tokens[0] == SCHEMA_TOKEN and len(tokens) > 1 else tokens[0]
        if token and valid_subject(token):
            return token
    return "_unknown"


#: Byte caps of a dead letter's identity headers (each value is one line, truncated).
HEADER_CAPS = {REASON: 1024, ADAPTER: 128, SCHEMA: 128, TABLE: 256, KEY: 1024,
               POSITION: 512, ORIGINAL_SUBJECT: 512}
#: Room kept below the limit for what the size estimate does not count.
_MARGIN = 64


def one_line(text: str, cap: int) -> str:
    """``text`` as one header line of at most ``cap`` UTF-8 bytes (``...`` when cut)."""
    flat = " ".join(text.split())
    raw = flat.encode()
    if len(raw) <= cap:
        return flat
    return raw[:max(0, cap - 3)].decode("utf-8", "ignore") + "..."


def _header_bytes(headers: dict[str, str]) -> int:
    return _HDR_OVERHEAD + sum(len(k) + len(v.encode()) + 4 for k, v in headers.items())


def identity(subject: str, payload: bytes, prefix: str) -> dict[str, str]:
    """Adapter, schema, table, key and position of a message, as dead-letter headers.

    From the body when it is a change event (CloudEvents JSON with the change envelope),
    else what the subject says (``<prefix>.<adapter>.<schema>.<table>.<op>``)."""
    out: dict[str, str] = {}
    head = prefix + "."
    rest = subject[len(head):].split(".") if subject.startswith(head) else []
    if rest and rest[0]:
        out[ADAPTER] = rest[0]
    if len(rest) == 4 and rest[3] in ("c", "u", "d", "r", "t"):
        if rest[1] != "_":
            out[SCHEMA] = rest[1]
        out[TABLE] = rest[2]
    data: Any = None
    if payload[:1] == b"{":
        try:
            data = orjson.loads(payload).get("data")
        except orjson.JSONDecodeError:
            data = None
    if isinstance(data, dict) and isinstance(data.get("source"), dict):
        src = data["source"]
        for name, field in ((ADAPTER, "adapter"), (SCHEMA, "schema"), (TABLE, "table"),
                            (POSITION, "position")):
            if src.get(field) is not None:
                out[name] = str(src[field])
        if src.get("index"):
            out[POSITION] = f"{out.get(POSITION, '')}#{src['index']}"
        if data.get("key") is not None:
            out[KEY] = orjson.dumps(data["key"], default=str,
                                    option=orjson.OPT_SORT_KEYS).decode()
    return {k: one_line(v, HEADER_CAPS[k]) for k, v in out.items()}


def dead_letter(msg_id: str, subject: str, payload: bytes, headers: dict[str, str] | None,
                reason: str, *, prefix: str, dlq: str, limit: int
                ) -> tuple[str, bytes, dict[str, str]]:
    """Subject, body and headers of the dead letter for a poison message.

    Its headers always say what the original was (:func:`identity`: adapter, schema,
    table, key, position), why (``Cdc-Reason``), its subject, id and size, each value
    truncated (:data:`HEADER_CAPS`), so the dead letter fits in ``limit`` bytes (the
    original's own headers are dropped, largest first, if they would not). The body is
    the original's when the whole fits in ``limit``, else empty (``Cdc-Body-Dropped``
    says why).

    A message that is itself a dead letter (on ``<prefix><dlq>.``, e.g. a source's
    oversized input) keeps its subject and its reason; the relay's reason goes to
    ``Cdc-Body-Truncated``/``Cdc-Body-Dropped``, and its body is cut to fit rather than
    dropped (it is raw input: its first bytes help). Never a dead letter of a dead letter.

    The id is derived from the original's, so a re-dead-lettering after a crash is
    dropped as a duplicate.
    """
    dlq_prefix = f"{prefix}{dlq}."
    again = subject.startswith(dlq_prefix) and valid_subject(subject)
    flat = one_line(reason, HEADER_CAPS[REASON])
    out = {k: v for k, v in (headers or {}).items()
           if k != MSG_ID and not k.startswith("Nats-")}
    ours: dict[str, str] = {}
    if again:
        target = subject
        ours[REASON] = one_line(out.pop(REASON, "") or flat, HEADER_CAPS[REASON])
    else:
        target = f"{dlq_prefix}{dlq_token(subject, prefix)}"
        ours.update(identity(subject, payload, prefix))
        ours[REASON] = flat
    ours.update({MSG_ID: "dlq-" + msg_id, ORIGINAL_ID: one_line(msg_id, 256),
                 ORIGINAL_SIZE: str(len(payload))})
    if not again:  # (a dead letter has no subject to be redriven to)
        ours[ORIGINAL_SUBJECT] = one_line(subject, HEADER_CAPS[ORIGINAL_SUBJECT])
    room = limit - _MARGIN - 256  # (room for the body header below)
    for k in sorted(out, key=lambda k: len(out[k]), reverse=True):
        if _header_bytes({**out, **ours}) <= room:
            break
        del out[k]
    final = {**out, **ours}
    if _header_bytes(final) > room:  # tiny limit: shorter values still
        final = {k: v if k == MSG_ID else one_line(v, 64) for k, v in ours.items()}
    size = len(payload) + _header_bytes(final)
    if size <= limit - _MARGIN:
        return target, payload, final
    if again:
        keep = max(0, limit - _MARGIN - _header_bytes(final) - 256)
        final[BODY_TRUNCATED] = one_line(f"first {keep} of {len(payload)} bytes kept: {flat}",
                                         256)
        return target, payload[:keep], final
    final[BODY_DROPPED] = one_line(f"{len(payload)} bytes do not fit in a dead letter of "
                                   f"{limit} bytes", 256)
    return target, b"", final


def min_duplicate_window(ack_timeout_s: float, retry_max_s: float) -> float:
    """Shortest duplicate window that covers a republish while connected.

    A message stored but not acknowledged is republished at most one ack timeout plus
    one back-off step later (the connection stays up), twice over for margin. Longer
    gaps (a restart, a reconnect) are covered by the relay's reconciliation instead.
    """
    return 2.0 * (ack_timeout_s + retry_max_s)


if TYPE_CHECKING:
    from cdc_bridge.outbox.base import OutboxMessage


def message_traceparent(msg: OutboxMessage) -> str:
    """The ``traceparent`` of an outbox message: its header, else its body's attribute,
    else the one derived from its id."""
    if msg.headers:
        value = msg.headers.get(TRACEPARENT)
        if value:
            return value
    return traceparent_in_body(msg.payload) or traceparent(msg.msg_id)
