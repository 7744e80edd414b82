"""Header names on the wire: what the relay, the replay command and the client share.

Subjects are built in :mod:`cdc_bridge.kernel.events` (``change_subject``,
``dead_letter_subject``); these are the NATS headers every stage reads or writes, plus
the one digest format of a claim check (:func:`claim_digest`), which the relay writes
and the client verifies.
"""

from __future__ import annotations

import base64
import hashlib

#: JetStream's de-duplication header: the event id, deterministic.
MSG_ID = "Nats-Msg-Id"
#: W3C trace context (also the body's CloudEvents attribute), derived from the event id:
#: :mod:`cdc_bridge.kernel.tracecontext`. Set on every message the relay publishes.
TRACEPARENT = "traceparent"
#: Why a message was dead-lettered (always on ``<prefix>_dlq.<...>`` subjects).
REASON = "Cdc-Reason"
#: On dead letters: where the original was going, its id and size.
ORIGINAL_SUBJECT = "Cdc-Original-Subject"
ORIGINAL_ID = "Cdc-Original-Id"
ORIGINAL_SIZE = "Cdc-Original-Size"
ORIGINAL_SEQ = "Cdc-Original-Seq"
#: On consumers' dead letters: the stream the original was read from, the consumer
#: (durable) that gave up, its deliveries, the order key and when (RFC 3339, UTC).
ORIGINAL_STREAM = "Cdc-Original-Stream"
CONSUMER = "Cdc-Consumer"
DELIVERIES = "Cdc-Deliveries"
ORDER_KEY = "Cdc-Order-Key"
DEAD_LETTERED_AT = "Cdc-Dead-Lettered-At"
#: On a redriven copy: the dead letter it came from (``<DLQ stream>:<seq>``).
REDRIVEN_FROM = "Cdc-Redriven-From"
#: On replayed copies: the original stream sequence and subject.
REPLAY_SEQ = "Cdc-Replay-Seq"
REPLAY_SUBJECT = "Cdc-Replay-Subject"
#: Routed outbox messages: the outbox row's id and sequence.
OUTBOX_ID = "Cdc-Outbox-Id"
OUTBOX_SEQ = "Cdc-Outbox-Seq"
#: On every dead letter: what the original was, as far as its body or subject tells
#: (each value one line, truncated to fit).
ADAPTER = "Cdc-Adapter"
SCHEMA = "Cdc-Schema"
TABLE = "Cdc-Table"
KEY = "Cdc-Key"
POSITION = "Cdc-Position"
#: On a dead letter sent without (all of) its body: why.
BODY_DROPPED = "Cdc-Body-Dropped"
BODY_TRUNCATED = "Cdc-Body-Truncated"
#: On a claim-check reference (an event too large for a message, whose body is an
#: object in a JetStream object store): the bucket, the object, its size in bytes and
#: its digest (:func:`claim_digest`).
CLAIM_BUCKET = "Cdc-Claim-Bucket"
CLAIM_OBJECT = "Cdc-Claim-Object"
CLAIM_SIZE = "Cdc-Claim-Size"
CLAIM_DIGEST = "Cdc-Claim-Digest"
#: On a schema-change event (``<prefix>._schema.>``): the registry key of the version it
#: introduces; the relay puts the event's ``data.entry`` there before publishing it.
SCHEMA_ENTRY = "Cdc-Schema-Entry"


def claim_digest(body: bytes) -> str:
    """``SHA-256=<url-safe base64>`` of ``body``: the object store's own digest format."""
    raw = hashlib.sha256(body).digest()
    return "SHA-256=" + base64.urlsafe_b64encode(raw).decode("ascii")
