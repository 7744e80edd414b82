"""Which pending outbox rows a stream already holds: exact, after any downtime.

JetStream drops a re-published message by its ``Nats-Msg-Id`` only within the stream's
duplicate window. Rows that waited longer than that (the bridge down for hours, a
``state_dir`` backup restored whose outbox still holds rows published since) would be
stored twice. Before sending such rows the relay asks the stream which of them it
holds: a headers-only consumer reads every message stored since the oldest of them was
written (less a minute for clocks) and their ids are matched against the rows' ids.
No sample, no row limit, and other publishers' traffic in the stream only costs the
reading: the answer is exact. Dead letters count as stored too (their ids are the
row's with ``dlq-`` in front, in the main stream or in its ``_DLQ`` stream).

Cost: one pass over the stream's headers since that moment, at reconnect, and only
when some pending row is older than most of the duplicate window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from cdc_bridge.kernel.wire import MSG_ID

#: Fetch size of the headers-only reader, and how long an empty fetch may take.
_FETCH = 2000
_FETCH_TIMEOUT_S = 2.0
#: Clocks of the bridge and the NATS servers may disagree by this much.
CLOCK_SLACK_MS = 60_000


def wanted_ids(rows: Iterable[tuple[int, str]]) -> dict[str, int]:
    """Row ids (and their dead letters' ids) -> outbox ``seq``."""
    out: dict[str, int] = {}
    for seq, msg_id in rows:
        out[msg_id] = seq
        out["dlq-" + msg_id] = seq
    return out


async def stored_rows(js: JetStreamContext, streams: Iterable[str], wanted: dict[str, int],
                      since_ms: int) -> set[int]:
    """The ``seq`` of every wanted row whose message (or dead letter) is in ``streams``
    stored at or after ``since_ms`` (less :data:`CLOCK_SLACK_MS`)."""
    found: set[int] = set()
    start = dt.datetime.fromtimestamp(max(0, since_ms - CLOCK_SLACK_MS) / 1000, dt.UTC)
    for stream in streams:
        try:
            await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            continue
        found |= await _scan(js, stream, wanted, start)
    return found


async def _scan(js: JetStreamContext, stream: str, wanted: dict[str, int],
                start: dt.datetime) -> set[int]:
    sub = await js.pull_subscribe("", stream=stream, config=api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_TIME,
        opt_start_time=start,
        ack_policy=api.AckPolicy.NONE, headers_only=True, inactive_threshold=60.0,
        max_waiting=1))
    found: set[int] = set()
    try:
        while True:
            try:
                msgs = await sub.fetch(_FETCH, timeout=_FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                return found  # nothing left after the last fetch
            for m in msgs:
                seq = wanted.get((m.headers or {}).get(MSG_ID, ""))
                if seq is not None:
                    found.add(seq)
            if msgs and msgs[-1].metadata.num_pending == 0:
                return found
    finally:
        await sub.unsubscribe()
