"""Turn a source's :class:`cdc_bridge.kernel.batch.ChangeBatch` into outbox messages; commit it.

Encoding (CloudEvents JSON, subject, headers) happens here, once, in the capture path;
the relay then only moves bytes. The commit itself runs on the store's capture thread
(:class:`cdc_bridge.outbox.runner.AsyncStore`), and wakes the relay.

Trace context. Every change event's body carries its ``traceparent`` (derived from its
id, :mod:`cdc_bridge.kernel.tracecontext`); the relay copies it into the NATS header
at publish, from the body, so the two are always equal and no header is stored per
row. A routed message (the outbox-table router) keeps a valid ``traceparent`` header
the application gave it (continuing the application's trace) or gets the one derived
from its id; either way the same value is put in its body and stored as its header. A
dead letter's header gets the one derived from its id. An optional
:class:`CommitObserver` (the daemon's tracing) hears of every committed batch.

Subjects. Without templates every event goes to its cached default subject
(``ChangeEvent.outbox_parts``); with a :class:`~cdc_bridge.kernel.subjects.SubjectRouter`
(the adapter's ``subject:`` templates) an event of a templated table is rendered by
its bound template instead (docs/subjects.md).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol

from cdc_bridge.kernel.batch import ChangeBatch
from cdc_bridge.kernel.events import (
    ChangeEvent,
    RoutedMessage,
    dead_letter_subject,
)
from cdc_bridge.kernel.schema_policy import SchemaPolicy
from cdc_bridge.kernel.subjects import SubjectRouter
from cdc_bridge.kernel.tracecontext import (
    TRACEPARENT,
    parse_traceparent,
    traceparent,
    with_traceparent,
)
from cdc_bridge.outbox.base import HeldRow, OutboxMessage
from cdc_bridge.outbox.fence import Fence
from cdc_bridge.outbox.runner import AsyncStore
from cdc_bridge.outbox.schema_tracker import ChangeListener, SchemaTracker


def _routed(m: RoutedMessage, prefix: str, now: int, ratio: float) -> OutboxMessage:
    headers = dict(m.headers) if m.headers else {}
    given = next((k for k in headers if k.lower() == TRACEPARENT), None)
    value = headers.pop(given) if given is not None else ""
    if parse_traceparent(value) is None:
        value = traceparent(m.id, ratio)
    headers[TRACEPARENT] = value
    return OutboxMessage(m.id, f"{prefix}.{m.subject}", with_traceparent(m.body, value),
                         headers, now)


def _templated(ev: ChangeEvent, prefix: str, ratio: float,
               router: SubjectRouter) -> tuple[str, str, bytes]:
    """``(id, subject, body)`` like ``outbox_parts``, the subject from the router."""
    eid, subject, body = ev.outbox_parts(prefix, ratio)
    bound = router.bound(prefix, ev.schema, ev.table)
    return eid, subject if bound is None else bound.render(ev), body


def _tracked(batch: ChangeBatch, prefix: str, ratio: float, subjects: SubjectRouter | None,
             tracker: SchemaTracker, now: int, held: list[HeldRow]) -> list[OutboxMessage]:
    """Change events with their schema: ``dataschema`` and a schema-change event before
    the first row of each new version; a paused table's events go to ``held``."""
    out: list[OutboxMessage] = []
    paused = tracker.paused
    for ev in batch.events:
        shape = ev.shape
        table: str | None = None
        if shape is None:
            ref = None
        else:
            ref, table = tracker.ref(ev, shape, out, now)
        eid, subject, body = ev.outbox_parts(prefix, ratio, ref)
        if subjects is not None:
            bound = subjects.bound(prefix, ev.schema, ev.table)
            if bound is not None:
                subject = bound.render(ev)
        if paused:
            hold = tracker.held_table(ev, table)
            if hold is not None:
                held.append((hold, OutboxMessage(eid, subject, body, None, now)))
                continue
        out.append(OutboxMessage(eid, subject, body, None, now))
    return out


def encode_batch(batch: ChangeBatch, prefix: str, sample_ratio: float = 1.0,
                 subjects: SubjectRouter | None = None, tracker: SchemaTracker | None = None,
                 held: list[HeldRow] | None = None) -> list[OutboxMessage]:
    """The outbox messages of ``batch``; ``sample_ratio`` decides the traceparents' flags,
    ``subjects`` the subjects of templated tables (``None``: every default subject);
    ``tracker`` (with ``held``, where a paused table's rows go) the events' schemas."""
    now = int(time.time() * 1000)
    if tracker is not None:
        out = _tracked(batch, prefix, sample_ratio, subjects, tracker, now,
                       held if held is not None else [])
    elif subjects is None:
        out = [OutboxMessage(*ev.outbox_parts(prefix, sample_ratio), None, now)
               for ev in batch.events]
    else:
        out = [OutboxMessage(*_templated(ev, prefix, sample_ratio, subjects), None, now)
               for ev in batch.events]
    out.extend(_routed(m, prefix, now, sample_ratio) for m in batch.messages)
    out.extend(
        OutboxMessage(dl.id, dead_letter_subject(prefix, dl.adapter), dl.payload,
                      {**dl.headers(), TRACEPARENT: traceparent(dl.id, sample_ratio)}, now)
        for dl in batch.dead_letters
    )
    return out


class CommitObserver(Protocol):
    """Told of every batch committed (tracing: capture and commit spans)."""

    def committed(self, adapter: str, batch: ChangeBatch, messages: list[OutboxMessage],
                  received_ns: int, encoded_ns: int, committed_ns: int) -> None: ...


@dataclass(frozen=True, slots=True)
class SchemaSettings:
    """What the writer needs to describe tables (None of it: events carry no schema)."""

    bucket: str
    policy: SchemaPolicy = field(default_factory=SchemaPolicy)
    listener: ChangeListener | None = None
    #: Shared with whoever releases the adapter's paused tables (the daemon), so that
    #: a release never interleaves with a batch being encoded and stored.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OutboxWriter:
    """Commits batches for one adapter: events, dead letters and checkpoint together."""

    def __init__(self, store: AsyncStore, adapter: str, prefix: str, *,
                 sample_ratio: float = 1.0, observer: CommitObserver | None = None,
                 subjects: SubjectRouter | None = None,
                 schemas: SchemaSettings | None = None, fence: Fence | None = None) -> None:
        self.store = store
        #: Group mode: the adapter's lease; a commit without it is refused.
        self.fence = fence
        self.subjects = subjects
        self.adapter = adapter
        self.prefix = prefix
        self.sample_ratio = sample_ratio
        self.observer = observer
        self.schemas = schemas
        self.tracker: SchemaTracker | None = None

    async def commit(self, batch: ChangeBatch) -> int:
        if self.schemas is not None:
            async with self.schemas.lock:
                return await self._commit_tracked(batch, self.schemas)
        observer = self.observer
        if observer is None:
            return await self.store.append(
                self.adapter,
                encode_batch(batch, self.prefix, self.sample_ratio, self.subjects),
                batch.checkpoint, fence=self.fence)
        received = time.time_ns()
        messages = encode_batch(batch, self.prefix, self.sample_ratio, self.subjects)
        encoded = time.time_ns()
        seq = await self.store.append(self.adapter, messages, batch.checkpoint,
                                      fence=self.fence)
        observer.committed(self.adapter, batch, messages, received, encoded, time.time_ns())
        return seq

    async def _commit_tracked(self, batch: ChangeBatch, settings: SchemaSettings) -> int:
        tracker = self.tracker
        if tracker is None:
            stored = [st for _, st in await self.store.schema_states(self.adapter)]
            tracker = self.tracker = SchemaTracker(
                self.adapter, self.prefix, settings.bucket, settings.policy, stored,
                sample_ratio=self.sample_ratio, listener=settings.listener)
        received = time.time_ns()
        held: list[HeldRow] = []
        try:
            messages = encode_batch(batch, self.prefix, self.sample_ratio, self.subjects,
                                    tracker, held)
            encoded = time.time_ns()
            seq = await self.store.append(self.adapter, messages, batch.checkpoint,
                                          tracker.take(), held, fence=self.fence)
        except BaseException:
            tracker.rolled_back()
            raise
        tracker.committed()
        if held:  # another process may have released the table meanwhile: follow it
            still = {st.table for _, st in await self.store.schema_states(self.adapter)
                     if st.paused}
            for table in {t for t, _ in held} - still:
                tracker.released(table)
        if self.observer is not None:
            self.observer.committed(self.adapter, batch, messages, received, encoded,
                                    time.time_ns())
        return seq

    async def release(self, table: str) -> int:
        """Accept ``table``'s schema: its held rows become pending; it flows again.
        The caller holds ``schemas.lock``."""
        moved = await self.store.release(self.adapter, table)
        if self.tracker is not None:
            self.tracker.released(table)
        return moved
