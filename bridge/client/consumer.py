"""A small library for downstream services: consume the bridge's events from JetStream.

    async def handle(event: Event) -> None:
        ...  # apply event.op / event.after / event.key to your model

    consumer = Consumer(ConsumerSettings(servers=["nats://..."], durable="billing",
                                         filter_subject="cdc.erp._.invoices.>"),
                        handle, seen=SqliteSeenStore("billing.db", "billing"))
    await consumer.run()

What it guarantees (docs/consumers.md has the whole design):

- **Per-key order, under any failure.** Messages are grouped by *order key* (adapter,
  schema, table and the row key: :attr:`Event.order_key`). A message is never handled
  while an earlier message of its key is not done (applied, skipped as a duplicate, or
  dead-lettered) — through handler failures, redeliveries, restarts and several
  instances sharing the durable consumer. Mechanism: per-key queues in each instance,
  plus a *gate* in the seen-store: the store keeps, per key, the stream sequence of the
  last message done; before handling sequence S of key K the instance finds the latest
  earlier message of K above the consumer's ack floor (from what it fetched, and from
  the stream for the sequences other instances took) and handles S only if the store
  says that one is done. Otherwise S waits (in-progress acks keep it), without a nak,
  so it does not use up deliveries.
- **Concurrency across keys**: up to ``concurrency`` handlers at once, one per key.
- **Exactly-once effects**: the handler runs inside the store's transaction; its writes
  through ``store.conn`` commit together with the event id and the key's position.
- **Failures**: an exception rolls back and naks with a delay from ``backoff_s``; after
  ``max_deliveries`` failed deliveries (or at once for a body that is not a
  CloudEvent) the message goes to the dead-letter stream (``<prefix>_dlq._consumer.
  <durable>`` in ``<STREAM>_DLQ``, with headers saying why, from where, how often) and
  is terminated; if the dead letter cannot be stored the message is nak'ed instead:
  never dropped. ``cdc-bridge dlq`` lists, shows and redrives dead letters.
- **Large events** (too large for one NATS message, sent by the bridge as a claim-check
  reference to an object store) reach the handler whole: the consumer fetches the body
  and checks its size and digest (:mod:`cdc_bridge.client.claims`); a reference whose
  object is gone (expired) or wrong is dead-lettered at once with the reason.
- **Schemas** (optional): ``validate=True`` checks each row event against its registry
  version and dead-letters one that does not match; ``upcasters=`` brings events of
  older versions to the service's before the handler, live or replayed
  (:mod:`cdc_bridge.client.evolution`).
- **Slow handlers** keep their messages with in-progress acks; one running longer than
  ``stuck_after_s`` is logged and counted (``stats.stuck``).
- **Housekeeping**: the ack floor is refreshed every ``floor_refresh_s``; seen ids and
  key positions older than the stream's retention (its ``max_age`` plus duplicate
  window, or ``seen_retention_s``) are pruned every ``prune_interval_s``.
- **Observability**: :attr:`Consumer.stats` (:mod:`cdc_bridge.client.stats`, with an
  optional Prometheus collector), :meth:`Consumer.health` / :meth:`Consumer.ready`,
  log records carrying ``event_id``, ``subject``, ``stream_seq``, ``order_key``,
  ``deliveries`` and ``consumer`` as structured fields.

A failed fetch (connection lost, JetStream unavailable) is logged and retried after the
shared back-off (:mod:`cdc_bridge.kernel.backoff`); :meth:`Consumer.stop` ends the wait,
lets running handlers finish (``drain_timeout_s``) and hands held messages back.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from cdc_bridge.client.claims import ClaimCorrupt, ClaimError, ClaimResolver, is_claim
from cdc_bridge.client.events import Event, decode_event, order_key_of
from cdc_bridge.client.evolution import Rejected, SchemaStage
from cdc_bridge.client.ordering import (
    KeyIndex,
    KeyQueues,
    Retention,
    seen_cutoff_ms,
    seen_retention,
)
from cdc_bridge.client.seen import MemorySeenStore, SeenStore
from cdc_bridge.client.stats import ConsumerStats
from cdc_bridge.client.tracing import handler_span
from cdc_bridge.kernel.backoff import Backoff, Policy
from cdc_bridge.kernel.events import dead_letter_prefix, dead_letter_stream
from cdc_bridge.kernel.wire import (
    CONSUMER,
    DEAD_LETTERED_AT,
    DELIVERIES,
    MSG_ID,
    ORDER_KEY,
    ORIGINAL_ID,
    ORIGINAL_SEQ,
    ORIGINAL_STREAM,
    ORIGINAL_SUBJECT,
    REASON,
)

if TYPE_CHECKING:
    from cdc_bridge.client.schemas import SchemaRegistry
    from cdc_bridge.client.upcasting import Upcasters

__all__ = ["Consumer", "ConsumerSettings", "Event", "Handler", "decode_event", "order_key_of"]

log = logging.getLogger("cdc_bridge.consumer")

Handler = Callable[["Event"], Awaitable[None]]

#: Back-off of :meth:`Consumer.run` after a failed fetch (the shared policy,
#: :mod:`cdc_bridge.kernel.backoff`): 1 s doubling to 15 s, with jitter; reset by any
#: fetch that does not fail (messages, or none before the fetch timeout).
FETCH_RETRY_INITIAL_S = 1.0
FETCH_RETRY_MAX_S = 15.0
#: Re-checks of a key waiting for an earlier message held elsewhere: the same policy,
#: 20 ms doubling to 1 s; a new message of the key wakes the wait at once.
GATE_RETRY_INITIAL_S = 0.02
GATE_RETRY_MAX_S = 1.0


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    servers: list[str]
    durable: str
    filter_subject: str
    stream: str = "CDC"
    max_deliveries: int = 5
    #: nak delay by delivery count (the last value repeats).
    backoff_s: tuple[float, ...] = (1.0, 2.0, 5.0, 15.0, 30.0)
    ack_wait_s: float = 30.0
    batch: int = 100
    max_ack_pending: int = 1000
    #: Handlers running at once (each on a different order key).
    concurrency: int = 8
    #: Messages this instance holds at most (queued per key or running); default
    #: ``max(batch, 4 * concurrency)``.
    max_held: int | None = None
    #: A handler running longer than this is logged and counted (``stats.stuck``).
    stuck_after_s: float = 60.0
    #: In-progress acks of held messages this often (default ``ack_wait_s / 3``).
    keepalive_s: float | None = None
    #: On stop, running handlers get this long to finish before they are cancelled.
    drain_timeout_s: float = 30.0
    #: Ack floor refresh (lets the order gate forget what every instance finished).
    floor_refresh_s: float = 1.0
    #: Seen ids and key positions are kept this long; ``None``: the stream's ``max_age``
    #: plus its duplicate window (nothing pruned when the stream keeps messages forever);
    #: 0: never prune.
    seen_retention_s: float | None = None
    prune_interval_s: float = 300.0
    #: Default: ``<first token of the filter>_dlq._consumer.<durable>``.
    dead_letter_subject: str | None = None
    #: Created if no stream captures the dead-letter subject; default ``<stream>_DLQ``.
    dead_letter_stream: str | None = None
    #: Hand the handler the whole event of a claim-check reference (a large event whose
    #: body is in an object store), fetched and checked; ``False``: the reference as it
    #: is (its ``Event.headers`` say where the body is).
    resolve_claims: bool = True
    connect_options: Mapping[str, Any] = field(default_factory=dict)

    def dlq_subject(self) -> str:
        if self.dead_letter_subject:
            return self.dead_letter_subject
        prefix = dead_letter_prefix(self.filter_subject.split(".")[0])
        return f"{prefix}._consumer.{self.durable}"

    def dlq_stream(self) -> str:
        return self.dead_letter_stream or dead_letter_stream(self.stream)

    def nak_delay(self, deliveries: int) -> float:
        return self.backoff_s[min(max(deliveries, 1), len(self.backoff_s)) - 1]

    def held_limit(self) -> int:
        return self.max_held or max(self.batch, 4 * self.concurrency)


@dataclass(slots=True)
class _Held:
    msg: Msg
    event: Event
    seq: int
    touched: float


class _Blocked(Exception):
    """An earlier message of the key is not done yet (raised inside the transaction)."""


_DONE, _BLOCKED, _FAILED = "done", "blocked", "failed"


def _fields(event: Event | None, msg: Msg, durable: str) -> dict[str, Any]:
    meta = msg.metadata
    return {"event_id": event.id if event else None, "subject": msg.subject,
            "stream_seq": meta.sequence.stream, "deliveries": meta.num_delivered,
            "order_key": event.order_key if event else None, "consumer": durable}


class Consumer:
    def __init__(self, settings: ConsumerSettings, handler: Handler,
                 seen: SeenStore | None = None, *, validate: bool = False,
                 upcasters: Upcasters | None = None,
                 registry: SchemaRegistry | None = None) -> None:
        """``validate``: check each row event's ``after`` against its registry version
        (needs the ``schemas`` extra); ``upcasters``: bring older events to the versions
        the service is written for; ``registry``: where versions are read (default: the
        bucket each event's ``dataschema`` names, over the consumer's connection). See
        :mod:`cdc_bridge.client.evolution`."""
        self.settings = settings
        self.handler = handler
        self._schemas: SchemaStage | None = None
        if validate or upcasters is not None:
            self._schemas = SchemaStage(validate, upcasters, registry)
        #: Without a store the gate and the ids live in memory: order and once-only hold
        #: within this one process only.
        self.seen: SeenStore = seen if seen is not None else MemorySeenStore()
        self.stats = ConsumerStats()
        self.scope = f"{settings.stream}/{settings.durable}"
        self.queues: KeyQueues[_Held] = KeyQueues()
        self.index = KeyIndex()
        self.nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._ready = False
        self._slots = asyncio.Semaphore(max(1, settings.concurrency))
        self._room = asyncio.Event()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._blocked: set[str] = set()
        self._running: dict[int, tuple[float, _Held]] = {}
        self._reported_stuck: set[int] = set()
        self._last_fetch = 0.0
        self._retention_s: float | None = None
        self._claims: ClaimResolver | None = None

    # -- control and health -----------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def ready(self) -> bool:
        """Subscribed and consuming (for a readiness probe)."""
        return self._ready and self.nc is not None and self.nc.is_connected

    def health(self) -> dict[str, Any]:
        """Readiness, liveness and the counters, as plain data (a health endpoint's body)."""
        now = time.monotonic()
        stuck = sum(1 for start, _ in self._running.values()
                    if now - start > self.settings.stuck_after_s)
        return {"ready": self.ready(), "stopping": self._stopping,
                "seconds_since_fetch": round(now - self._last_fetch, 3)
                if self._last_fetch else None,
                "stuck_handlers": stuck, **self.stats.as_dict()}

    def consumer_config(self) -> api.ConsumerConfig:
        s = self.settings
        return api.ConsumerConfig(
            durable_name=s.durable, filter_subject=s.filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=s.ack_wait_s, max_deliver=-1, max_ack_pending=s.max_ack_pending)

    # -- the loop ---------------------------------------------------------------------

    async def run(self, stop_when_idle: bool = False, fetch_timeout_s: float = 1.0) -> None:
        """Consume until :meth:`stop` (or, with ``stop_when_idle``, until caught up)."""
        s = self.settings
        self.nc = await nats.connect(**{"servers": s.servers, "max_reconnect_attempts": -1,
                                        **dict(s.connect_options)})
        try:
            js = self._js = self.nc.jetstream()
            self._claims = ClaimResolver(js)
            if self._schemas is not None:
                self._schemas.bind(js, s.stream)
            await self._ensure_dlq(js)
            sub = await js.pull_subscribe(s.filter_subject, durable=s.durable, stream=s.stream,
                                          config=self.consumer_config())
            await self._start_index(js, sub)
            self._ready = True
            helpers = [asyncio.create_task(self._keepalive()),
                       asyncio.create_task(self._housekeeping(sub))]
            try:
                await self._fetch_loop(sub, stop_when_idle, fetch_timeout_s)
            finally:
                self._ready = False
                await self._drain()
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
        finally:
            await self.nc.close()

    async def _fetch_loop(self, sub: Any, stop_when_idle: bool, fetch_timeout_s: float) -> None:
        s = self.settings
        backoff = Backoff("fetch", log, initial_s=FETCH_RETRY_INITIAL_S,
                          max_s=FETCH_RETRY_MAX_S)
        limit = s.held_limit()
        while not self._stop.is_set():
            # messages waiting for an earlier one held elsewhere do not count: that one's
            # redelivery may have to come here (the server's max_ack_pending bounds them)
            waiting = sum(self.queues.depth(k) for k in self._blocked)
            room = limit - (self.queues.held - waiting)
            if room <= 0:
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), fetch_timeout_s)
                continue
            try:
                msgs = await sub.fetch(min(s.batch, room), timeout=fetch_timeout_s)
            except TimeoutError:  # nats-py raises its own subclass or a bare asyncio one
                backoff.reset()
                self._last_fetch = time.monotonic()
                if stop_when_idle and self.queues.held == 0 and await self._caught_up(sub):
                    return
                continue
            except nats.errors.Error as e:
                self.stats.fetch_errors += 1
                await backoff.wait(e, stop=self._stop)
                continue
            backoff.reset()
            self._last_fetch = time.monotonic()
            for msg in msgs:
                await self._accept(msg)

    @staticmethod
    async def _caught_up(sub: Any) -> bool:
        info = await sub.consumer_info()
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    async def _start_index(self, js: JetStreamContext, sub: Any) -> None:
        info = await sub.consumer_info()
        stream = await js.stream_info(self.settings.stream)
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        self.index = KeyIndex(max(floor, stream.state.first_seq - 1))
        retention = seen_retention(self.settings.seen_retention_s,
                                   float(stream.config.max_age or 0),
                                   float(stream.config.duplicate_window or 0))
        self._retention_s = retention.seconds
        log.info("consumer %s on %s: ack floor %d, %d pending; seen-store retention %s (%s)",
                 self.settings.durable, self.settings.filter_subject, floor,
                 info.num_pending or 0,
                 f"{retention.seconds:g}s" if retention.seconds else "unlimited",
                 retention.source)

    async def _accept(self, msg: Msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        try:
            event = decode_event(msg.subject, msg.data, msg.headers, seq, meta.num_delivered)
        except ValueError as e:
            self.index.record(seq, None)
            await self._dead_letter(msg, None, f"undecodable: {e}")
            return
        okey = event.order_key
        self.index.record(seq, okey)
        if self.queues.add(okey, seq, _Held(msg, event, seq, time.monotonic())):
            self._wake[okey] = asyncio.Event()
            self._workers[okey] = asyncio.create_task(self._work(okey))
        else:
            self._wake[okey].set()
        self._gauges()

    def _gauges(self) -> None:
        st = self.stats
        st.held, st.keys, st.key_queue_max = (self.queues.held, self.queues.keys,
                                              self.queues.deepest())
        st.running = len(self._running)

    # -- one key ----------------------------------------------------------------------

    async def _work(self, okey: str) -> None:
        """Handle ``okey``'s messages, lowest stream sequence first."""
        policy = Policy(GATE_RETRY_INITIAL_S, GATE_RETRY_MAX_S, GATE_RETRY_INITIAL_S)
        waits = 0
        try:
            while not self._stopping and (head := self.queues.head(okey)) is not None:
                seq, held = head
                outcome = await self._attempt(okey, held)
                if outcome == _BLOCKED:
                    waits += 1
                    self.stats.deferred += 1 if waits == 1 else 0
                    self._blocked.add(okey)
                    self._room.set()
                    await self._wait_key(okey, policy.delay(waits))
                    continue
                waits = 0
                self._blocked.discard(okey)
                self.queues.remove(okey, seq)
                self._room.set()
                self._gauges()
        finally:
            self._blocked.discard(okey)
            if self.queues.head(okey) is None:
                self._workers.pop(okey, None)
                self._wake.pop(okey, None)

    async def _wait_key(self, okey: str, delay: float) -> None:
        wake = self._wake.get(okey)
        if wake is None:
            return
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), delay)

    async def _attempt(self, okey: str, held: _Held) -> str:
        hint = await self.seen.last_seq(self.scope, okey)
        low = max(self.index.floor, hint)
        if not await self._fill_gaps(low, held.seq):
            return _BLOCKED
        if self.index.predecessor(okey, held.seq, low) is not None:
            return _BLOCKED
        async with self._slots:
            return await self._run_one(okey, held)

    async def _run_one(self, okey: str, held: _Held) -> str:
        event, seq = held.event, held.seq
        started = time.monotonic()
        self._running[seq] = (started, held)
        duplicate = False
        try:
            async with self.seen.transaction() as tx:
                last = await tx.last_seq(self.scope, okey)
                if self.index.predecessor(okey, seq, max(self.index.floor, last)) is not None:
                    raise _Blocked
                duplicate = last >= seq or await tx.seen(event.id)
                if not duplicate:
                    body = held.msg.data
                    if self.settings.resolve_claims and is_claim(event.headers):
                        event, body = await self._resolve(held)
                    if self._schemas is not None:
                        prepared = await self._schemas.prepare(event, body)
                        self.stats.upcast += prepared is not event
                        event = prepared
                    with handler_span(event.traceparent, event.subject, event.id,
                                      self.settings.durable, event.deliveries):
                        await self.handler(event)
                await tx.done(self.scope, okey, seq, event.id)
        except _Blocked:
            return _BLOCKED
        except ClaimError as e:  # the large event's body is gone or wrong: never better
            self.stats.claims_unresolved += 1
            await self._dead_letter(held.msg, held.event, f"claim check: {e}")
            return _FAILED
        except Rejected as e:  # not of its version, or cannot be upcast: never better
            self.stats.schema_rejected += 1
            await self._dead_letter(held.msg, held.event, f"schema: {e}")
            return _FAILED
        except Exception as e:
            self.stats.failures += 1
            await self._failed(held, e)
            return _FAILED
        finally:
            self._running.pop(seq, None)
            self._reported_stuck.discard(seq)
        if duplicate:
            self.stats.duplicates += 1
        else:
            self.stats.handled += 1
            self.stats.latency.observe(time.monotonic() - started)
        await self._settle(held.msg.ack(), held)
        return _DONE

    async def _resolve(self, held: _Held) -> tuple[Event, bytes]:
        """The whole event a claim-check reference stands for (:mod:`.claims`), and its
        body."""
        assert self._claims is not None
        msg = held.msg
        body = await self._claims.resolve(msg.headers, msg.data)
        try:
            event = decode_event(msg.subject, body, msg.headers, held.seq,
                                 msg.metadata.num_delivered)
        except ValueError as e:
            raise ClaimCorrupt(f"the claimed body is not a change event: {e}") from None
        if event.id != held.event.id:
            raise ClaimCorrupt(f"the claimed body is event {event.id}, not {held.event.id}")
        self.stats.claims_resolved += 1
        return event, body

    async def _settle(self, call: Awaitable[None], held: _Held) -> None:
        """Ack/nak/term; a lost one only means a redelivery, which the store skips."""
        try:
            await call
        except (nats.errors.Error, TimeoutError, OSError) as e:
            log.warning("could not settle message %d: %s", held.seq, e,
                        extra=_fields(held.event, held.msg, self.settings.durable))

    async def _failed(self, held: _Held, error: Exception) -> None:
        s = self.settings
        n = held.msg.metadata.num_delivered
        reason = f"{type(error).__name__}: {error}"
        if n >= s.max_deliveries:
            await self._dead_letter(held.msg, held.event, reason)
            return
        delay = s.nak_delay(n)
        log.warning("event %s (%s) failed on delivery %d: %s; redelivery in %.1fs",
                    held.event.id, held.msg.subject, n, reason, delay,
                    extra=_fields(held.event, held.msg, s.durable))
        await self._settle(held.msg.nak(delay=delay), held)

    async def _fill_gaps(self, low: int, seq: int) -> bool:
        """Read the order keys of messages between ``low`` and ``seq`` this instance has not
        seen (other instances took them) from the stream; ``False`` if it cannot now."""
        js = self._js
        for first, last in self.index.gaps_between(low, seq):
            cur = first
            while cur <= last and js is not None:
                try:
                    raw = await js.get_msg(self.settings.stream, seq=cur,
                                           subject=self.settings.filter_subject, next=True)
                except nats.js.errors.NotFoundError:
                    raw = None
                except (nats.errors.Error, TimeoutError) as e:
                    log.warning("cannot read stream %s at %d for the order gate: %s",
                                self.settings.stream, cur, e)
                    return False
                found = raw.seq if raw is not None and raw.seq is not None else None
                if found is None or found > last:
                    self.index.known_empty(cur, last)
                    break
                self.index.known_empty(cur, found - 1)
                self.index.record(found, order_key_of(raw.data or b"") if raw else None)
                cur = found + 1
        return True

    # -- background -------------------------------------------------------------------

    async def _keepalive(self) -> None:
        s = self.settings
        interval = s.keepalive_s or max(0.1, s.ack_wait_s / 3)
        while True:
            await asyncio.sleep(min(interval, s.stuck_after_s))
            now = time.monotonic()
            for held in self.queues.all_items():
                if now - held.touched >= interval * 0.9:
                    held.touched = now
                    with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
                        await held.msg.in_progress()
                        self.stats.in_progress_sent += 1
            self._report_stuck(now)

    def _report_stuck(self, now: float) -> None:
        limit = self.settings.stuck_after_s
        for seq, (start, held) in list(self._running.items()):
            if now - start > limit and seq not in self._reported_stuck:
                self._reported_stuck.add(seq)
                self.stats.stuck += 1
                log.error("handler for event %s (%s) still running after %.0fs",
                          held.event.id, held.msg.subject, now - start,
                          extra=_fields(held.event, held.msg, self.settings.durable))

    async def _housekeeping(self, sub: Any) -> None:
        s = self.settings
        next_prune = time.monotonic()
        while True:
            await asyncio.sleep(s.floor_refresh_s)
            try:
                info = await sub.consumer_info()
            except (nats.errors.Error, TimeoutError):
                continue
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            self.index.advance_floor(floor)
            self.stats.num_pending = int(info.num_pending or 0)
            for wake in self._wake.values():  # a key may wait on a message now acked
                wake.set()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + s.prune_interval_s
                await self.prune(floor)

    async def prune(self, floor: int | None = None) -> int:
        """Forget seen ids and key positions older than the retention; rows removed."""
        cutoff = seen_cutoff_ms(int(time.time() * 1000), Retention(self._retention_s, "consumer"))
        if cutoff is None:
            return 0
        removed = await self.seen.prune(cutoff, self.scope,
                                        self.index.floor if floor is None else floor)
        if removed:
            log.info("pruned %d seen ids and key positions older than %.0fs", removed,
                     self._retention_s or 0)
        return removed

    async def _drain(self) -> None:
        """Stop taking messages; let running handlers finish; hand the rest back."""
        self._stopping = True
        workers = list(self._workers.values())
        if workers:
            _, pending = await asyncio.wait(workers, timeout=self.settings.drain_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for held in self.queues.all_items():
            await self._settle(held.msg.nak(), held)

    # -- dead letters -----------------------------------------------------------------

    async def _ensure_dlq(self, js: JetStreamContext) -> None:
        """Make sure a stream captures the dead-letter subject (best effort)."""
        subject = self.settings.dlq_subject()
        try:
            await js.find_stream_name_by_subject(subject)
            return
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, TimeoutError) as e:
            log.warning("cannot look up the stream of %s: %s", subject, e)
            return
        name = self.settings.dlq_stream()
        try:
            await js.add_stream(api.StreamConfig(name=name,
                                                 subjects=[f"{subject.split('.')[0]}.>"]))
            log.info("created dead-letter stream %s for %s", name, subject)
        except (nats.errors.Error, TimeoutError) as e:
            log.warning("no stream captures %s and creating %s failed (%s): dead letters "
                        "will be retried until one does", subject, name, e)

    async def _dead_letter(self, msg: Msg, event: Event | None, reason: str) -> None:
        s = self.settings
        meta = msg.metadata
        seq = meta.sequence.stream
        subject = s.dlq_subject()
        ident = event.id if event else f"seq-{seq}"
        headers = {k: v for k, v in (msg.headers or {}).items()
                   if not k.startswith("Nats-")}
        headers.update({
            MSG_ID: f"dlq:{s.durable}:{ident}",
            REASON: " ".join(reason.split())[:1024],
            ORIGINAL_SUBJECT: msg.subject,
            ORIGINAL_SEQ: str(seq),
            ORIGINAL_STREAM: meta.stream,
            DELIVERIES: str(meta.num_delivered),
            CONSUMER: s.durable,
            DEAD_LETTERED_AT: dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        })
        if event is not None:
            headers[ORIGINAL_ID] = event.id
            headers[ORDER_KEY] = event.order_key[:512]
        fields = _fields(event, msg, s.durable)
        assert self._js is not None
        try:
            ack = await self._js.publish(subject, msg.data, headers=headers)
        except (nats.errors.Error, TimeoutError) as e:
            log.error("cannot store dead letter for %s on %s (%s); will retry", ident, subject,
                      e, extra=fields)
            await self._settle_raw(msg.nak(delay=s.nak_delay(meta.num_delivered)))
            return
        if ack.duplicate:
            self.stats.dead_letter_duplicates += 1
        else:
            self.stats.dead_lettered += 1
        log.error("dead-lettered %s (%s) to %s after %d deliveries: %s", ident, msg.subject,
                  subject, meta.num_delivered, reason, extra=fields)
        if event is not None:  # the key moves on past it
            async with self.seen.transaction() as tx:
                await tx.done(self.scope, event.order_key, seq, None)
        await self._settle_raw(msg.term())

    async def _settle_raw(self, call: Awaitable[None]) -> None:
        with contextlib.suppress(nats.errors.Error, TimeoutError, OSError):
            await call
