"""A small library for downstream services: consume the bridge's events from JetStream.

    async def handle(event: Event) -> None:
        ...  # apply event.op / event.after / event.key to your model

    consumer = Consumer(ConsumerSettings(servers=["nats://..."], durable="billing",
                                         filter_subject="cdc.erp._.invoices.>"),
                        handle, seen=SqliteSeenStore("billing.db", "billing"))
    await consumer.run()

Design:

- a durable pull consumer (state on the server: a restart resumes where it stopped),
  messages processed one at a time in stream order;
- bodies decoded (pure, :func:`decode_event`) into a frozen :class:`Event`;
- once per event id: with a seen-store (:mod:`cdc_bridge.client.seen`) the handler is skipped for
  ids it already applied (duplicate delivery, redelivery after a lost ack, a replay);
- success: the id is marked, then the message acked;
- failure: ``nak`` with a delay from ``backoff_s`` (by delivery count), so JetStream
  redelivers later; after ``max_deliveries`` failed deliveries, or for a body that is
  not a CloudEvent, the message is published to the dead-letter subject (with
  ``Cdc-Reason``, ``Cdc-Original-Subject``, ``Cdc-Original-Seq``, ``Cdc-Deliveries``
  headers, awaited PubAck) and then terminated. If the dead letter cannot be stored the
  message is nak'ed instead: never dropped;
- a failed fetch (connection lost, JetStream unavailable) is logged and retried after the
  shared back-off (:mod:`cdc_bridge.kernel.backoff`); :meth:`Consumer.stop` ends the wait.

Order: one message at a time keeps stream order, except that a nak'ed message comes
back after later ones. Handlers that must not regress a row compare
:attr:`Event.sequence` (the original stream sequence, kept across replays) with what
they stored, or set ``max_ack_pending=1`` for strict order at a throughput cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from cdc_bridge.client.seen import SeenStore
from cdc_bridge.kernel.backoff import Backoff
from cdc_bridge.kernel.events import DLQ_TOKEN
from cdc_bridge.kernel.wire import MSG_ID, ORIGINAL_SEQ, ORIGINAL_SUBJECT, REASON, REPLAY_SEQ

log = logging.getLogger("cdc_bridge.consumer")

Handler = Callable[["Event"], Awaitable[None]]

#: Back-off of :meth:`Consumer.run` after a failed fetch (the shared policy,
#: :mod:`cdc_bridge.kernel.backoff`): 1 s doubling to 15 s, with jitter; reset by any
#: fetch that does not fail (messages, or none before the fetch timeout).
FETCH_RETRY_INITIAL_S = 1.0
FETCH_RETRY_MAX_S = 15.0


@dataclass(frozen=True, slots=True)
class Event:
    """One change, as a subscriber sees it."""

    id: str
    subject: str
    op: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None
    key: Mapping[str, Any] | None
    source: Mapping[str, Any]
    time: dt.datetime | None
    type: str = ""
    #: Original stream sequence (from ``Cdc-Replay-Seq`` for replayed events).
    sequence: int = 0
    #: How many times this message has been delivered (1 on the first delivery).
    deliveries: int = 1
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def adapter(self) -> str:
        return str(self.source.get("adapter", ""))

    @property
    def table(self) -> str:
        return str(self.source.get("table", ""))

    @property
    def schema(self) -> str | None:
        value = self.source.get("schema")
        return None if value is None else str(value)

    @property
    def row(self) -> Mapping[str, Any] | None:
        """The row image that describes the result: ``after``, or ``before`` for deletes."""
        return self.before if self.op == "d" else self.after


def decode_event(subject: str, body: bytes, headers: Mapping[str, str] | None = None,
                 sequence: int = 0, deliveries: int = 1) -> Event:
    """Decode a CloudEvents body produced by the bridge; ``ValueError`` if it is not one."""
    try:
        ce = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"body is not JSON: {e}") from None
    if not isinstance(ce, dict) or ce.get("specversion") != "1.0":
        raise ValueError("body is not a CloudEvents 1.0 structured JSON object")
    data = ce.get("data")
    if not isinstance(data, dict) or data.get("op") not in ("c", "u", "d", "r", "t"):
        raise ValueError("data is not a change envelope with op c/u/d/r/t")
    hdrs = dict(headers or {})
    if REPLAY_SEQ in hdrs:
        with contextlib.suppress(ValueError):
            sequence = int(hdrs[REPLAY_SEQ])
    when = None
    if isinstance(ce.get("time"), str):
        with contextlib.suppress(ValueError):
            when = dt.datetime.fromisoformat(ce["time"].replace("Z", "+00:00"))
    return Event(id=str(ce.get("id", "")), subject=subject, op=data["op"],
                 before=data.get("before"), after=data.get("after"), key=data.get("key"),
                 source=data.get("source") or {}, time=when, type=str(ce.get("type", "")),
                 sequence=sequence, deliveries=deliveries, headers=hdrs)


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
    #: Default: ``<first token of the filter>._dlq._consumer.<durable>``.
    dead_letter_subject: str | None = None
    connect_options: Mapping[str, Any] = field(default_factory=dict)

    def dlq_subject(self) -> str:
        if self.dead_letter_subject:
            return self.dead_letter_subject
        return f"{self.filter_subject.split('.')[0]}.{DLQ_TOKEN}._consumer.{self.durable}"

    def nak_delay(self, deliveries: int) -> float:
        return self.backoff_s[min(max(deliveries, 1), len(self.backoff_s)) - 1]


@dataclass(slots=True)
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    failures: int = 0
    dead_lettered: int = 0


class Consumer:
    def __init__(self, settings: ConsumerSettings, handler: Handler,
                 seen: SeenStore | None = None) -> None:
        self.settings = settings
        self.handler = handler
        self.seen = seen
        self.stats = ConsumerStats()
        self._stop = asyncio.Event()
        self.nc: NATS | None = None

    def stop(self) -> None:
        self._stop.set()

    def consumer_config(self) -> api.ConsumerConfig:
        s = self.settings
        return api.ConsumerConfig(
            durable_name=s.durable, filter_subject=s.filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=s.ack_wait_s, max_deliver=-1, max_ack_pending=s.max_ack_pending)

    async def run(self, stop_when_idle: bool = False, fetch_timeout_s: float = 1.0) -> None:
        """Consume until :meth:`stop` (or, with ``stop_when_idle``, until caught up)."""
        s = self.settings
        self.nc = await nats.connect(**{"servers": s.servers, "max_reconnect_attempts": -1,
                                        **dict(s.connect_options)})
        try:
            js = self.nc.jetstream()
            sub = await js.pull_subscribe(s.filter_subject, durable=s.durable, stream=s.stream,
                                          config=self.consumer_config())
            backoff = Backoff("fetch", log, initial_s=FETCH_RETRY_INITIAL_S,
                              max_s=FETCH_RETRY_MAX_S)
            while not self._stop.is_set():
                try:
                    msgs = await sub.fetch(s.batch, timeout=fetch_timeout_s)
                except TimeoutError:  # nats-py raises its own subclass or a bare asyncio one
                    backoff.reset()
                    if stop_when_idle and await self._caught_up(sub):
                        return
                    continue
                except nats.errors.Error as e:
                    await backoff.wait(e, stop=self._stop)
                    continue
                backoff.reset()
                for msg in msgs:
                    await self.process(msg, js)
        finally:
            await self.nc.close()

    @staticmethod
    async def _caught_up(sub: Any) -> bool:
        info = await sub.consumer_info()
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    async def process(self, msg: Msg, js: Any) -> None:
        """Handle one delivered message: skip, handle+ack, nak, or dead-letter."""
        meta = msg.metadata
        n = meta.num_delivered
        try:
            event = decode_event(msg.subject, msg.data, msg.headers, meta.sequence.stream, n)
        except ValueError as e:
            await self._dead_letter(msg, js, f"undecodable: {e}", None)
            return
        if n > self.settings.max_deliveries:
            await self._dead_letter(msg, js, f"delivered {n} times without success", event.id)
            return
        if self.seen is not None and await self.seen.seen(event.id):
            await self.seen.discard()
            self.stats.duplicates += 1
            await msg.ack()
            return
        try:
            await self.handler(event)
        except Exception as e:
            self.stats.failures += 1
            if self.seen is not None:
                await self.seen.discard()
            reason = f"{type(e).__name__}: {e}"
            if n >= self.settings.max_deliveries:
                await self._dead_letter(msg, js, reason, event.id)
            else:
                delay = self.settings.nak_delay(n)
                log.warning("event %s (%s) failed on delivery %d: %s; redelivery in %.1fs",
                            event.id, msg.subject, n, reason, delay)
                await msg.nak(delay=delay)
            return
        if self.seen is not None:
            await self.seen.mark(event.id)
        self.stats.handled += 1
        await msg.ack()

    async def _dead_letter(self, msg: Msg, js: Any, reason: str, event_id: str | None) -> None:
        meta = msg.metadata
        subject = self.settings.dlq_subject()
        ident = event_id or f"seq-{meta.sequence.stream}"
        headers = {
            MSG_ID: f"dlq:{self.settings.durable}:{ident}",
            REASON: " ".join(reason.split())[:1024],
            ORIGINAL_SUBJECT: msg.subject,
            ORIGINAL_SEQ: str(meta.sequence.stream),
            "Cdc-Deliveries": str(meta.num_delivered),
            "Cdc-Consumer": self.settings.durable,
        }
        try:
            await js.publish(subject, msg.data, headers=headers)
        except (nats.errors.Error, TimeoutError) as e:
            log.error("cannot store dead letter for %s on %s (%s); will retry", ident, subject,
                      e)
            await msg.nak(delay=self.settings.nak_delay(meta.num_delivered))
            return
        log.error("dead-lettered %s (%s) to %s after %d deliveries: %s", ident, msg.subject,
                  subject, meta.num_delivered, reason)
        self.stats.dead_lettered += 1
        await msg.term()
