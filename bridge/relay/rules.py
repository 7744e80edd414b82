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
from typing import Any

import orjson

from cdc_bridge.kernel.wire import MSG_ID, ORIGINAL_ID, ORIGINAL_SIZE, ORIGINAL_SUBJECT, REASON

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
    """The adapter token of ``subject`` (the one after the prefix), for its DLQ subject."""
    head = prefix + "."
    if subject.startswith(head):
        token = subject[len(head):].split(".", 1)[0]
        if token and valid_subject(token):
            return token
    return "_unknown"


def dead_letter(msg_id: str, subject: str, payload: bytes, headers: dict[str, str] | None,
                reason: str, *, prefix: str, dlq: str, body_limit: int
                ) -> tuple[str, bytes, dict[str, str]]:
    """Subject, body and headers of the dead letter for a poison message.

    The body is the original one when it fits in ``body_limit``, else empty (the
    original size is in ``Cdc-Original-Size``). The id is derived from the original's,
    so a re-dead-lettering after a crash is dropped as a duplicate.
    """
    out = {k: v for k, v in (headers or {}).items() if k != MSG_ID}
    out.update({
        MSG_ID: "dlq-" + msg_id,
        REASON: " ".join(reason.split())[:1024],
        ORIGINAL_SUBJECT: subject[:512],
        ORIGINAL_ID: msg_id,
        ORIGINAL_SIZE: str(len(payload)),
    })
    body = payload if len(payload) + headers_size(out) <= body_limit else b""
    return f"{prefix}{dlq}.{dlq_token(subject, prefix)}", body, out


def min_duplicate_window(ack_timeout_s: float, retry_max_s: float) -> float:
    """Shortest duplicate window that covers a republish while connected.

    A message stored but not acknowledged is republished at most one ack timeout plus
    one back-off step later (the connection stays up), twice over for margin. Longer
    gaps (a restart, a reconnect) are covered by the relay's reconciliation instead.
    """
    return 2.0 * (ack_timeout_s + retry_max_s)
