"""``cdc-bridge replay``: republish a range of the stream to another subject prefix.

Use case: rebuilding a read model. The service consumes ``<target>.>`` (same tokens
after the prefix as the original subjects) and gets the same CloudEvents bodies again,
in the original order, without touching the live subjects its durable consumer reads.

Range: a stream sequence range (``--from-seq``/``--to-seq``) or a time range
(``--since``/``--until``, ISO 8601 or a duration back from now such as ``2h``), on
subjects matching ``--filter``. The upper bound defaults to the stream's last sequence
when the replay starts, so events arriving meanwhile are not replayed (they reach the
service live).

Reading uses an ephemeral pull consumer with no acks (nothing left behind on the
server). Publishing is pipelined (``publish_async``), every PubAck awaited.

Headers: the original headers are kept, except the relay's own (the message id, the
outbox's, and the relay's ``Nats-Expected-*`` order chain); ``Cdc-Replay-Seq``
carries the original stream sequence and ``Cdc-Replay-Subject`` the original subject,
so a consumer can order replayed and live events on one sequence.
``Nats-Msg-Id`` becomes ``<event id>@<target>`` (plus ``#<run id>`` when given): unique
per replay target, so the target stream's duplicate window does not swallow a replay
because the original ids were seen, while an interrupted replay re-run to the same
target publishes each event once. A new ``--run-id`` replays again into the same target.

The target must be captured by a stream other than the source (else the replay would
feed itself); one is created (``--target-stream``) when no stream covers it.

Dead letters are never replayed: they live in their own stream (``<STREAM>_DLQ``, on
``<prefix>_dlq.>``), and those an older version left inside the main stream
(``<prefix>._dlq.>``, see ``cdc-bridge dlq migrate``) are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from cdc_bridge.config import BridgeConfig
from cdc_bridge.kernel.errors import ConfigError
from cdc_bridge.kernel.events import LEGACY_DLQ_TOKEN
from cdc_bridge.kernel.model import parse_duration
from cdc_bridge.kernel.wire import MSG_ID, OUTBOX_ID, OUTBOX_SEQ, REPLAY_SEQ, REPLAY_SUBJECT
from cdc_bridge.relay.publisher import connect_once

DROP_HEADERS = frozenset({MSG_ID, OUTBOX_ID, OUTBOX_SEQ})
REPLAY_SEQ_HEADER = REPLAY_SEQ
REPLAY_SUBJECT_HEADER = REPLAY_SUBJECT


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    target: str
    filter_subject: str | None = None
    from_seq: int | None = None
    to_seq: int | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    run_id: str | None = None
    target_stream: str | None = None
    target_max_age_s: float = 7 * 86400.0
    batch: int = 500


@dataclass(slots=True)
class ReplayResult:
    #: Events the target stream stored, and events it already held (a repeated replay).
    published: int = 0
    duplicates: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    target_stream: str = ""


def parse_when(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """ISO 8601 (``2026-01-02T03:04:05Z``) or a duration back from now (``90m``)."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        return now - dt.timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected an ISO 8601 time or a duration such as 2h (got {value!r})")\
            from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def target_subject(subject: str, source_prefix: str, target: str) -> str:
    """``cdc.erp._.invoices.c`` -> ``<target>.erp._.invoices.c``."""
    if subject.startswith(source_prefix + "."):
        return target + subject[len(source_prefix):]
    return f"{target}.{subject}"


def replay_msg_id(event_id: str, target: str, run_id: str | None) -> str:
    return f"{event_id}@{target}" + (f"#{run_id}" if run_id else "")


def _start_config(opts: ReplayOptions) -> api.ConsumerConfig:
    cfg = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=60.0,
                             mem_storage=True)
    if opts.from_seq:
        cfg.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        cfg.opt_start_seq = opts.from_seq
    elif opts.since:
        cfg.deliver_policy = api.DeliverPolicy.BY_START_TIME
        cfg.opt_start_time = opts.since
    else:
        cfg.deliver_policy = api.DeliverPolicy.ALL
    return cfg


async def _ensure_target(js: JetStreamContext, config: BridgeConfig,
                         opts: ReplayOptions) -> str:
    probe = f"{opts.target}.x"
    try:
        name = await js.find_stream_name_by_subject(probe)
    except nats.js.errors.NotFoundError:
        name = None
    if name == config.nats.stream:
        raise ConfigError([f"replay target {opts.target!r} is captured by the source stream "
                           f"{name}: choose a prefix outside {config.nats.subject_prefix}.>"])
    if name:
        return name
    name = opts.target_stream or "REPLAY_" + "".join(
        c if c.isalnum() else "_" for c in opts.target).upper()
    await js.add_stream(api.StreamConfig(
        name=name, subjects=[f"{opts.target}.>"], storage=api.StorageType.FILE,
        max_age=opts.target_max_age_s or None, duplicate_window=120.0,
        num_replicas=config.nats.replicas))
    return name


async def replay(config: BridgeConfig, opts: ReplayOptions,
                 progress: Callable[[int, int], None] = lambda done, total: None
                 ) -> ReplayResult:
    """Replay per ``opts``; ``progress(done, total)`` after each batch."""
    nc = await connect_once(config.nats)
    try:
        js = nc.jetstream(publish_async_max_pending=opts.batch * 2)
        result = ReplayResult()
        result.target_stream = await _ensure_target(js, config, opts)
        info = await js.stream_info(config.nats.stream)
        end = min(opts.to_seq or info.state.last_seq, info.state.last_seq)
        start = max(opts.from_seq or info.state.first_seq, info.state.first_seq)
        total = max(0, end - start + 1)
        filt = opts.filter_subject or f"{config.nats.subject_prefix}.>"
        sub = await js.pull_subscribe(filt, stream=config.nats.stream, config=_start_config(opts))
        try:
            await _copy(js, sub, config, opts, end, result, lambda d: progress(d, total))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return result
    finally:
        await nc.close()


async def _copy(js: JetStreamContext, sub: JetStreamContext.PullSubscription,
                config: BridgeConfig, opts: ReplayOptions, end: int, result: ReplayResult,
                progress: Callable[[int], None]) -> None:
    prefix = config.nats.subject_prefix
    legacy_dlq = f"{prefix}.{LEGACY_DLQ_TOKEN}."
    while True:
        try:
            msgs = await sub.fetch(opts.batch, timeout=2.0)
        except TimeoutError:  # nats-py raises its own subclass or a bare asyncio one
            return
        futures = []
        finished = False
        for m in msgs:
            meta = m.metadata
            seq = meta.sequence.stream
            if seq > end or (opts.until and meta.timestamp > opts.until):
                finished = True
                break
            if opts.since and meta.timestamp < opts.since:  # the server's start is a hint
                if meta.num_pending == 0:
                    finished = True
                    break
                continue
            if m.subject.startswith(legacy_dlq):  # dead letters of an older version
                if meta.num_pending == 0:
                    finished = True
                    break
                continue
            headers = {k: v for k, v in (m.headers or {}).items()
                       if k not in DROP_HEADERS and not k.startswith("Nats-Expected-")}
            original_id = (m.headers or {}).get(MSG_ID) or f"seq-{seq}"
            headers[MSG_ID] = replay_msg_id(original_id, opts.target, opts.run_id)
            headers[REPLAY_SEQ_HEADER] = str(seq)
            headers[REPLAY_SUBJECT_HEADER] = m.subject
            futures.append(await js.publish_async(
                target_subject(m.subject, prefix, opts.target), m.data, headers=headers))
            result.first_seq = result.first_seq or seq
            result.last_seq = seq
            if meta.num_pending == 0 or seq >= end:
                finished = True
                break
        acks = await asyncio.gather(*futures)
        stored_again = sum(1 for ack in acks if ack.duplicate)
        result.duplicates += stored_again
        result.published += len(acks) - stored_again
        progress(result.published + result.duplicates)
        if finished or not msgs:
            return
