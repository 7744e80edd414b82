"""Header names on the wire: what the relay, the replay command and the client share.

Subjects are built in :mod:`cdc_bridge.kernel.events` (``change_subject``,
``dead_letter_subject``); these are the NATS headers every stage reads or writes.
"""

from __future__ import annotations

#: JetStream's de-duplication header: the event id, deterministic.
MSG_ID = "Nats-Msg-Id"
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
