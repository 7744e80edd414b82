"""The relay: moves outbox rows to JetStream in ``seq`` order, pipelined, exactly once.

One *session* per NATS connection: connect (and create/update the stream), reconcile,
then pump until stopped or until something fails:

- the sender reads pending rows (the next read overlaps the current publishes) and
  publishes each one with :meth:`cdc_bridge.relay.publisher.Publisher.send`, never more than
  ``max_in_flight`` awaiting their PubAck;
- a row too large for one message (the server's ``max_payload``, the stream's
  ``max_msg_size``) goes by claim check (:mod:`cdc_bridge.relay.claims`, on by default):
  its body is put in the claim-check bucket, then a small reference is published in
  its place, same id and subject;
- the settler walks the in-flight rows strictly in order as their PubAcks arrive:
  stored (or duplicate) rows advance the acknowledged ``seq``; poison rows are
  dead-lettered to ``<prefix>._dlq.<adapter>`` with the reason in ``Cdc-Reason`` and
  count as done; a transient failure (no PubAck within ``ack_timeout``, a JetStream
  error that is not poison, the connection lost) ends the session;
- the acknowledged prefix is deleted from the store in the background, a batch at a
  time, and the store is compacted when the relay goes idle.

A failed session is retried with the shared back-off (:mod:`cdc_bridge.kernel.backoff`),
restarting from the first row not yet acknowledged. Each state change is one log
line: ``JetStream unavailable`` (with what failed and how many publishes were in
flight), the back-off's ``retrying in`` lines, then ``recovered after Ns; draining N
pending``.

Exactly once, as subscribers see it: every message carries ``Nats-Msg-Id`` = the event
id, so a row republished after a failure or a crash (stored, but not yet acknowledged
or deleted) is dropped by the stream's duplicate window. Rows older than 80% of that
window at (re)connect are checked against the stream's last messages and skipped when
already stored (:meth:`Relay.reconcile`), so a downtime longer than the window does not
duplicate them either.

Order: the stream holds the rows in outbox order, at any pipeline depth, through
leader elections and node losses. Rows are sent in ``seq`` order on one connection, and
a lost connection never reorders (the client does not buffer across reconnects, see
:mod:`cdc_bridge.relay.publisher`). What pipelining alone cannot prevent is JetStream
failing one message transiently (a timeout or "no responders" in a clustered stream's
leader election, a full ``discard: new`` stream) while it stores a later one: the
*order window*. The relay closes it with a *chain* over the stream
(``outbox.expect_last_sequence``, on by default): every publish carries
``Nats-Expected-Last-Sequence`` = the stream sequence its predecessor gets, so a
message whose predecessor was not stored is refused (``wrong last sequence``) instead
of stored ahead of it, and the session restarts from the first unacknowledged row.
A chain over the whole stream, not per subject: subjects carry the op, so one key's
changes span several subjects.

What JetStream does (nats-server 2.15, checked against real servers): on a
replicated stream it answers a message id already stored as a duplicate *before* it
checks the expectation, and checks the expectation before proposing (a refused message
leaves nothing behind); on a single server it checks the expectation first. Hence the
session start (:meth:`Relay._resync`): the relay reads the stream's last sequence and
the id stored there. That id is a pending row's: the rows up to it are stored (a chain
stores a gapless prefix), resent without expectation (duplicates) and the chain starts
after them at that sequence. It is the last row this relay settled (or the stream is
empty): the chain starts at that sequence. Anything else (a restarted process, a
message of another publisher): rows are sent one at a time without expectation until
one is newly stored, whose sequence starts the chain. All of this assumes the bridge is
its stream's only writer. If something else writes into it, the next chained message is
refused: logged (``chain broken``), counted in ``RelayStats.chain_breaks``, the session
restarts from that row, and rows go one at a time for :data:`SERIAL_AFTER_FOREIGN_S`
(order needs no chain then): never a loss or a duplicate; the one row in flight when the
foreign message came may land behind later ones (reported as an order window, see
:meth:`Relay._check_chain`). Without the chain the settler still detects the window
(``order window``, ``RelayStats.reordered``); ``max_in_flight: 1`` then closes it at the
cost of throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import nats.errors

from cdc_bridge import metrics
from cdc_bridge.kernel.backoff import retrying
from cdc_bridge.kernel.errors import FatalError, PublishUnavailable
from cdc_bridge.kernel.events import DLQ_TOKEN, dead_letter_prefix, dead_letter_stream
from cdc_bridge.kernel.tracecontext import TRACEPARENT
from cdc_bridge.kernel.wire import BODY_DROPPED, MSG_ID
from cdc_bridge.outbox.base import OutboxMessage, PendingRow
from cdc_bridge.outbox.runner import AsyncStore
from cdc_bridge.relay.claims import ClaimChecker, ClaimRefused
from cdc_bridge.relay.publisher import PENDING, Publisher, Slot
from cdc_bridge.relay.reconcile import stored_rows, wanted_ids
from cdc_bridge.relay.registry import RegistryWriter
from cdc_bridge.relay.rules import (
    DUPLICATE,
    OK,
    POISON,
    dead_letter,
    dlq_token,
    headers_size,
    is_wrong_last_sequence,
    message_traceparent,
    precheck,
)
from cdc_bridge.relay.settings import OutboxConfig
from cdc_bridge.relay.tracing import Tracing

log = logging.getLogger("cdc_bridge.relay")

#: Rows older than this share of the duplicate window are reconciled against the stream.
RECONCILE_AGE_SHARE = 0.8
#: Pending rows looked up in the stream per pass (bounds the memory of one pass).
RECONCILE_PAGE = 100_000
#: After a foreign write into the stream broke the chain, publish one row at a time
#: (order needs no chain then) for this long before chaining again.
SERIAL_AFTER_FOREIGN_S = 60.0
#: Subjects whose precheck and metrics series are remembered (a bound: subject
#: templates with a column token make any number of subjects).
SUBJECT_CACHE = 65_536


#: Outcomes as publish spans name them.
_OUTCOME_NAMES = {OK: "published", DUPLICATE: "duplicate", POISON: "dead_lettered"}


@dataclass(slots=True)
class RelayStats:
    published: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    reconnects: int = 0
    reconciled: int = 0
    reordered: int = 0
    chain_breaks: int = 0
    serial_sends: int = 0
    claim_checks: int = 0


@dataclass(frozen=True, slots=True)
class _SubjectSeries:
    """A subject's adapter token and its publish-latency series (looked up once)."""

    adapter: str
    latency: Any


#: The ``traceparent`` header every publish carries: name, value and framing.
_TP_SIZE = 11 + 55 + 4


def _wire_size(msg: OutboxMessage) -> int:
    """What a message weighs against max_payload: body, headers, the id and trace headers."""
    size = len(msg.payload) + 14 + len(msg.msg_id) + 17 + _TP_SIZE
    if msg.headers:
        size += headers_size(msg.headers)
    return size


class Relay:
    def __init__(self, store: AsyncStore, publisher: Publisher,
                 settings: OutboxConfig | None = None, *,
                 compact_interval_s: float = 30.0, tracing: Tracing | None = None) -> None:
        """``settings``: the config file's ``outbox`` block, whole (batch, pipeline depth,
        poll interval); the subject prefix and timeouts come with the publisher's ``nats``.
        ``tracing``: publish spans (:mod:`cdc_bridge.relay.tracing`), ``None``: none."""
        settings = settings or OutboxConfig()
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.prefix = publisher.cfg.subject_prefix
        self.batch = settings.relay_batch
        self.poll_interval_s = settings.poll_interval
        self.max_in_flight = settings.max_in_flight
        self.chain = settings.expect_last_sequence
        self.compact_interval_s = compact_interval_s
        self.ack_timeout_s = publisher.cfg.ack_timeout
        self.retry_max_s = publisher.cfg.retry_max
        self.stats = RelayStats()
        self.tracing = tracing
        #: Oversized events go by claim check (None: claim checks off, they are poison).
        self.claims = ClaimChecker(publisher.cfg) if publisher.cfg.claim_checks.enabled \
            else None
        #: Schema-change rows put their version in the registry first (None: registry off).
        self.registry = RegistryWriter(publisher.cfg) \
            if publisher.cfg.schema_registry.enabled else None
        self._dlq_subjects = dead_letter_prefix(self.prefix) + "."
        #: Per subject: the metrics series its rows count in (:meth:`_series_of`).
        self._series: dict[str, _SubjectSeries] = {}
        self._stopping = asyncio.Event()
        self._space = asyncio.Event()
        self._sent = asyncio.Event()
        self._down_since: float | None = None
        self._ever_connected = False
        self._progress = False
        self._skip: set[int] = set()
        self._subject_ok: dict[str, str | None] = {}
        self._acked_seq = 0
        self._removed_seq = 0
        self._remove_task: asyncio.Task[None] | None = None
        self._last_compact = time.monotonic()
        self._removed_since_compact = False
        #: The chain: next expected stream sequence (None: not known, send one at a time),
        #: the outbox seq up to which rows are known stored, the last ids this relay saw
        #: stored (its last settled row, its last dead letter).
        self._expect: int | None = None
        self._stored_upto = 0
        self._known_tail: list[str] = ["", ""]
        self._gap = 0
        self._serial_until = 0.0
        self._aborted = False

    def stop(self) -> None:
        """Finish what is in flight, then return from :meth:`run`."""
        self._stopping.set()
        self.store.appended.set()
        self._space.set()
        self._sent.set()

    # -- sessions ---------------------------------------------------------------------

    async def run(self) -> None:
        """Publish until :meth:`stop`; transient failures are retried, fatal ones raise."""
        while not self._stopping.is_set():
            async for attempt in retrying("publish to JetStream", log, max_s=self.retry_max_s):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self.stats.retries += 1
                    if self._stopping.is_set():
                        return
                    await self._session()

    async def _session(self) -> None:
        """One connection's worth of publishing; returns after progress, else raises."""
        self._progress = False
        try:
            await self.publisher.connect()
            await self._recovered()
            await self.reconcile()
            await self._resync()
            await self._pump()
        except PublishUnavailable as e:
            self._went_down(e)
            if self._progress:
                return  # made progress: start over at once with a fresh back-off
            raise

    def _went_down(self, error: BaseException) -> None:
        metrics.PUBLISH_FAILURES.inc()
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("JetStream unavailable: %s", error)

    async def _recovered(self) -> None:
        if self._down_since is not None:
            if self._ever_connected:
                self.stats.reconnects += 1
                metrics.RECONNECTS.labels("nats").inc()
            pending = (await self.store.stats()).pending
            log.info("JetStream recovered after %.1fs; draining %d pending",
                     time.monotonic() - self._down_since, pending)
            self._down_since = None
        self._ever_connected = True

    async def reconcile(self) -> int:
        """Skip pending rows the stream already holds and dedup may no longer catch.

        Every pending row older than :data:`RECONCILE_AGE_SHARE` of the duplicate window
        (younger ones are deduplicated by JetStream anyway), however many, is looked up
        exactly (:mod:`cdc_bridge.relay.reconcile`: the stream's headers since it was
        written), in pages of :data:`RECONCILE_PAGE` rows. Rows found are settled as
        duplicates without being sent.
        """
        self._skip = set()
        js = self.publisher.js
        if js is None:
            return 0
        window_ms = self.publisher.cfg.duplicate_window * 1000
        cutoff = int(time.time() * 1000) - window_ms * RECONCILE_AGE_SHARE
        streams = [self.publisher.cfg.stream, dead_letter_stream(self.publisher.cfg.stream)]
        after, checked = 0, 0
        while True:
            rows = await self.store.pending(after, RECONCILE_PAGE)
            stale = [r for r in rows if r.message.created_ms < cutoff]
            if not stale:
                break
            try:
                self._skip |= await stored_rows(
                    js, streams, wanted_ids((r.seq, r.message.msg_id) for r in stale),
                    min(r.message.created_ms for r in stale))
            except (TimeoutError, nats.errors.Error, OSError) as e:
                raise PublishUnavailable(f"cannot read the stream back: {e}") from e
            checked += len(stale)
            if len(stale) < len(rows):
                break
            after = rows[-1].seq
        if checked:
            self.stats.reconciled += len(self._skip)
            log.info("reconciled %d rows older than the duplicate window: %d already in the "
                     "stream", checked, len(self._skip))
        return len(self._skip)

    async def _resync(self) -> None:
        """Where the chain starts this session (see the module docstring)."""
        self._expect, self._stored_upto, self._gap = None, 0, 0
        if not self.chain or self._serial_until:
            return
        last_seq, last_id = await self.publisher.stream_tail()
        if last_id == "" or last_id in self._known_tail:
            self._expect = last_seq
            return
        if last_id is not None:
            rows = await self.store.pending(0, self.max_in_flight + self.batch)
            for r in rows:
                if r.message.msg_id == last_id:
                    self._stored_upto, self._expect = r.seq, last_seq
                    return
        log.info("the last message of stream %s (seq %d, id %s) is none the relay knows: "
                 "sending one row at a time until one is newly stored", self.publisher.cfg.stream,
                 last_seq, last_id)

    # -- the pump ---------------------------------------------------------------------

    async def _pump(self) -> None:
        inflight: deque[Slot] = deque()
        self._aborted = False
        first = await self.store.pending(0, 1)
        self._acked_seq = self._removed_seq = first[0].seq - 1 if first else 0
        settler = asyncio.create_task(self._settle(inflight), name="relay-settle")
        reader: asyncio.Task[list[PendingRow]] | None = None
        cursor = self._acked_seq
        try:
            while not self._stopping.is_set() and not settler.done():
                rows = await (reader or self.store.pending(cursor, self.batch))
                reader = None
                if not rows:
                    if not await self._idle(settler, cursor):
                        continue
                    rows = await self.store.pending(cursor, self.batch)
                    if not rows:
                        continue
                cursor = rows[-1].seq
                reader = asyncio.create_task(self.store.pending(cursor, self.batch))
                await self._send_rows(rows, inflight, settler)
                self.stats.batches += 1
            self._sent.set()
            await settler  # drains what is in flight when stopping; raises on failure
        finally:
            if reader is not None:
                reader.cancel()
            if not settler.done():
                # the flag and the wake-ups, not only cancel(): Python 3.11's wait_for can
                # swallow a cancellation that meets a completion, and the settler would
                # then wait on _sent for ever
                self._aborted = True
                settler.cancel()
                self._sent.set()
                self.publisher.acked.set()
            await asyncio.gather(settler, return_exceptions=True)
            if reader is not None:
                await asyncio.gather(reader, return_exceptions=True)
            self.publisher.forget()
            await self._final_remove()

    async def _send_rows(self, rows: list[PendingRow], inflight: deque[Slot],
                         settler: asyncio.Task[None]) -> None:
        pub = self.publisher
        limit = min(pub.max_payload, pub.max_msg_size if pub.max_msg_size > 0 else 1 << 62)
        skip = self._skip
        for row in rows:
            while len(inflight) >= self.max_in_flight:
                if settler.done() or self._stopping.is_set():
                    return  # (checked before clearing: a settler that ended set _space)
                self._space.clear()
                await self._space.wait()
            slot = Slot(row.seq, row.message)
            msg = row.message
            if skip and row.seq in skip:
                slot.outcome = DUPLICATE
                skip.discard(row.seq)
                inflight.append(slot)
                self._sent.set()
                continue
            if msg.headers is not None and self.registry is not None:
                await self.registry.register(pub.js, msg)  # the version before its event
            reason = self._subject_reason(msg.subject)
            size = _wire_size(msg)
            if reason is None and size > limit:
                slot, size, reason = await self._claim_check(slot, size, limit)
            if reason is None and size <= limit:
                if not self.chain or row.seq <= self._stored_upto:
                    await pub.send(slot)
                elif self._expect is not None and self._serial_until == 0.0:
                    await pub.send(slot, self._expect)
                    self._expect += 1
                else:  # where the chain stands is not known: one at a time, unchained
                    await pub.send(slot)
                    inflight.append(slot)
                    self._sent.set()
                    self.stats.serial_sends += 1
                    await self._await_outcome(slot, settler)
                    if slot.outcome == OK:
                        self._expect = slot.ack_seq
                        if self._serial_until and time.monotonic() >= self._serial_until:
                            self._serial_until = 0.0
                            log.info("chaining publishes again")
                    continue
            else:
                slot.outcome = POISON
                slot.reason = reason or precheck(
                    msg.subject, size, max_payload=pub.max_payload,
                    stream_subjects=pub.stream_subjects, max_msg_size=pub.max_msg_size) or "?"
            inflight.append(slot)
            self._sent.set()

    def _subject_reason(self, subject: str) -> str | None:
        """Why ``subject`` cannot go to the stream (``None``: it can); remembered for up to
        :data:`SUBJECT_CACHE` subjects."""
        reason = self._subject_ok.get(subject, "?")
        if reason == "?":
            reason = precheck(subject, 0, max_payload=1,
                              stream_subjects=self.publisher.stream_subjects, max_msg_size=-1)
            if len(self._subject_ok) < SUBJECT_CACHE:
                self._subject_ok[subject] = reason
        return reason

    async def _claim_check(self, slot: Slot, size: int, limit: int
                           ) -> tuple[Slot, int, str | None]:
        """An event too large for one message: its body goes to the bucket first, then its
        reference takes its place in the sequence of publishes (the put is awaited, so
        order holds). Dead letters never go by claim check: kept for ever, they are cut
        instead (:func:`cdc_bridge.relay.rules.dead_letter`). Returns the slot to send,
        its size, and the poison reason (``None``: the size decides) if it cannot go."""
        if self.claims is None or slot.message.subject.startswith(self._dlq_subjects):
            return slot, size, None
        try:
            ref = await self.claims.check_in(self.publisher.js, slot.message)
        except ClaimRefused as e:
            return slot, limit + 1, str(e)
        size = _wire_size(ref)  # (its traceparent: the original's, kept in its body)
        if size > limit:
            return slot, size, (f"even its claim-check reference ({size} bytes) exceeds the "
                                f"limit of {limit} bytes")
        self.stats.claim_checks += 1
        return Slot(slot.seq, ref), size, None

    async def _await_outcome(self, slot: Slot, settler: asyncio.Task[None]) -> None:
        """Wait until ``slot`` is settled (or the session ends)."""
        while slot.outcome == PENDING and not settler.done() and not self._stopping.is_set():
            self._space.clear()
            await self._space.wait()

    async def _idle(self, settler: asyncio.Task[None], cursor: int) -> bool:
        """Wait for new rows; ``False`` if woken by a stop or a settler failure."""
        self.store.appended.clear()
        if await self.store.pending(cursor, 1):
            return True
        self._maybe_remove(force=True)
        await self._maybe_compact()
        waiter = asyncio.create_task(self.store.appended.wait())
        lost = asyncio.create_task(self.publisher.lost.wait())
        try:
            await asyncio.wait({waiter, lost, settler}, timeout=self.poll_interval_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            lost.cancel()
        if self.publisher.lost.is_set():  # reconnect now, not at the next publish
            raise PublishUnavailable("connection to NATS lost while idle")
        return not (self._stopping.is_set() or settler.done())

    # -- the settler ------------------------------------------------------------------

    async def _settle(self, inflight: deque[Slot]) -> None:
        try:
            await self._settle_loop(inflight)
        finally:
            self._space.set()
            self.store.appended.set()

    async def _settle_loop(self, inflight: deque[Slot]) -> None:
        pub = self.publisher
        low_water = max(0, self.max_in_flight - max(1, self.max_in_flight // 4))
        while not self._aborted:
            if inflight and inflight[0].outcome != PENDING:
                await self._settle_done(inflight)
                if len(inflight) <= low_water:
                    self._space.set()
                self._maybe_remove(force=not inflight)
                continue
            if not inflight:
                if self.tracing is not None:  # the pipeline emptied: close the batch span
                    self.tracing.flush_publish()
                if self._stopping.is_set():
                    return
                self._sent.clear()
                await self._sent.wait()
                continue
            head = inflight[0]
            pub.acked.clear()
            timeout = head.sent_at + self.ack_timeout_s - time.monotonic()
            if timeout <= 0:
                raise PublishUnavailable(f"no PubAck within {self.ack_timeout_s:g}s "
                                         f"({len(inflight)} publishes in flight)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pub.acked.wait(), timeout)

    async def _settle_done(self, inflight: deque[Slot]) -> None:
        """Settle the leading slots that have an outcome."""
        published: dict[str, int] = {}
        duplicates: dict[str, int] = {}
        now = time.time()
        tracing = self.tracing
        try:
            while inflight and inflight[0].outcome != PENDING:
                slot = inflight[0]
                outcome = slot.outcome
                if tracing is not None and outcome in _OUTCOME_NAMES:
                    tracing.settled(slot, _OUTCOME_NAMES[outcome])
                if outcome == OK:
                    per = self._series_of(slot.message.subject)
                    published[per.adapter] = published.get(per.adapter, 0) + 1
                    per.latency.observe(now - slot.message.created_ms / 1000)
                    self._known_tail[0] = slot.message.msg_id
                elif outcome == DUPLICATE:
                    adapter = self._series_of(slot.message.subject).adapter
                    duplicates[adapter] = duplicates.get(adapter, 0) + 1
                    self._known_tail[0] = slot.message.msg_id
                    if slot.expected_last >= 0:  # stored before: took no sequence
                        self._gap = self._gap or slot.seq
                elif outcome == POISON:
                    if slot.expected_last >= 0:  # sent in the chain, refused: a gap
                        self._gap = slot.seq
                    await self._dead_letter(slot)
                else:
                    self._check_order_window(slot, inflight)
                    self._check_chain(slot, inflight)
                    raise PublishUnavailable(slot.reason or "publish failed")
                inflight.popleft()
                self._acked_seq = slot.seq
                self._progress = True
        finally:
            for adapter, n in published.items():
                self.stats.published += n
                metrics.EVENTS_PUBLISHED.labels(adapter).inc(n)
            for adapter, n in duplicates.items():
                self.stats.duplicates += n
                metrics.PUBLISH_DUPLICATES.labels(adapter).inc(n)

    def _series_of(self, subject: str) -> _SubjectSeries:
        """The adapter token of ``subject`` and its latency series (cached per subject,
        up to :data:`SUBJECT_CACHE` subjects: a ``{col:...}`` template has no bound)."""
        per = self._series.get(subject)
        if per is None:
            adapter = dlq_token(subject, self.prefix)
            per = _SubjectSeries(adapter, metrics.PUBLISH_LATENCY.labels(adapter))
            if len(self._series) < SUBJECT_CACHE:
                self._series[subject] = per
        return per

    def _check_order_window(self, failed: Slot, inflight: deque[Slot]) -> None:
        later = [s for s in inflight if s.outcome == OK and s.seq > failed.seq
                 and s.message.subject == failed.message.subject]
        if later:
            self.stats.reordered += 1
            metrics.ORDER_WINDOW.inc()
            log.warning("order window: outbox seq %d on %s failed transiently (%s) after later "
                        "seq %d on the same subject was stored; its retry lands after it",
                        failed.seq, failed.message.subject, failed.reason, later[0].seq)

    def _check_chain(self, failed: Slot, inflight: deque[Slot]) -> None:
        """A chain refusal of the first unsettled row: its predecessor was stored (or it
        has none in this session), so something else moved the stream's last sequence.

        A foreign message may take exactly the place of the refused row, and then the
        rows after it are stored ahead of it (their expectations hold again): that is
        reported and counted as an order window. From here the relay publishes one row
        at a time for :data:`SERIAL_AFTER_FOREIGN_S` (order without a chain)."""
        if failed.expected_last < 0 or not is_wrong_last_sequence(failed.reason):
            return
        if self._gap:
            log.info("outbox seq %d refused by the chain after seq %d took no stream sequence "
                     "(refused as poison, or stored before); resending from it", failed.seq,
                     self._gap)
            return
        self.stats.chain_breaks += 1
        self._serial_until = time.monotonic() + SERIAL_AFTER_FOREIGN_S
        log.warning("chain broken at outbox seq %d: stream %s refused it (%s; expected last "
                    "sequence %d): something else writes into the stream; resending from it, "
                    "one row at a time for %gs", failed.seq, self.publisher.cfg.stream,
                    failed.reason, failed.expected_last, SERIAL_AFTER_FOREIGN_S)
        ahead = [s for s in inflight if s.seq > failed.seq and s.outcome in (OK, PENDING)]
        if ahead and not any(s.message.subject == failed.message.subject for s in ahead
                             if s.outcome == OK):  # (else _check_order_window counted it)
            self.stats.reordered += 1
            metrics.ORDER_WINDOW.inc()
            log.warning("order window: outbox seq %d..%d may be stored ahead of seq %d (a "
                        "foreign message took its place in the chain)", ahead[0].seq,
                        ahead[-1].seq, failed.seq)

    async def _dead_letter(self, slot: Slot) -> None:
        msg = slot.message
        pub = self.publisher
        limit = min(pub.max_payload, pub.max_msg_size if pub.max_msg_size > 0 else 1 << 62)
        subject, body, headers = dead_letter(
            msg.msg_id, msg.subject, msg.payload, msg.headers, slot.reason,
            prefix=self.prefix, dlq=DLQ_TOKEN, limit=limit)
        headers.setdefault(TRACEPARENT, slot.traceparent or message_traceparent(msg))
        log.error("dead-lettering event %s (%s) to %s: %s", msg.msg_id, msg.subject, subject,
                  slot.reason)
        try:
            await pub.publish_one(subject, body, headers)
        except FatalError:
            if not body:
                raise
            # the stream refuses the dead letter too (its limits changed under us): keep
            # the reason and the original's identity, drop the body
            headers[BODY_DROPPED] = "the stream refused the original body"
            await pub.publish_one(subject, b"", headers)
        self._known_tail[1] = headers.get(MSG_ID, "")
        self.stats.dead_lettered += 1
        metrics.DEAD_LETTERS.labels(subject.rsplit(".", 1)[-1], "publish").inc()

    # -- removing and compacting ------------------------------------------------------

    def _maybe_remove(self, force: bool = False) -> None:
        task = self._remove_task
        if task is not None:
            if not task.done():
                return
            self._remove_task = None
            task.result()  # a store failure surfaces here (retryable)
        due = self._acked_seq - self._removed_seq
        if due > 0 and (force or due >= self.batch):
            self._remove_task = asyncio.create_task(self._remove(self._acked_seq))

    async def _remove(self, up_to: int) -> None:
        await self.store.remove(up_to)
        self._removed_seq = max(self._removed_seq, up_to)
        self._removed_since_compact = True

    async def _final_remove(self) -> None:
        task, self._remove_task = self._remove_task, None
        with contextlib.suppress(Exception):
            if task is not None:
                await task
            if self._acked_seq > self._removed_seq:
                await self._remove(self._acked_seq)

    async def _maybe_compact(self) -> None:
        now = time.monotonic()
        if self._removed_since_compact and now - self._last_compact >= self.compact_interval_s:
            self._last_compact = now
            self._removed_since_compact = False
            try:
                await self.store.compact()
            except Exception as e:  # compaction is housekeeping: never stop publishing
                log.warning("outbox compaction failed: %s", e)

    def describe(self) -> dict[str, Any]:
        s = self.stats
        return {"published": s.published, "duplicates": s.duplicates,
                "dead_lettered": s.dead_lettered, "retries": s.retries,
                "reconnects": s.reconnects, "reordered": s.reordered,
                "chain_breaks": s.chain_breaks, "claim_checks": s.claim_checks}
