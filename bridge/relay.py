"""The relay: moves outbox rows to JetStream, in ``seq`` order, and deletes them after PubAck.

Loop: read up to ``relay_batch`` pending rows, publish them pipelined, await the
PubAcks, dead-letter any poison message, delete the contiguous prefix that is stored,
repeat. When the store is empty it waits for the writer's wake-up (or
``poll_interval``). When NATS is unreachable the batch is retried with the shared
back-off policy, logging each state change; adapters keep capturing into the outbox
meanwhile and the relay drains it on recovery.

Exactly once, as seen by subscribers: every message carries ``Nats-Msg-Id`` = the
event id, so a row republished after a crash (acked but not yet deleted) is dropped by
the stream's duplicate window. For a restart after a downtime longer than that window,
:meth:`Relay.reconcile` reads the stream's last message: its ``Cdc-Outbox-Id`` and
``Cdc-Outbox-Seq`` headers say which rows of this store are already stored.

Order: rows go out in ``seq`` order on one connection and only a stored prefix is
deleted; a failed batch is retried from its first unstored row. The one window for
reordering is a message that JetStream rejects transiently while a later one in the
same pipeline is stored (possible in a clustered stream during a leader change): the
retry then lands after the later one. On a single server a connection loss fails
every message after the lost one, so order holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from bridge.backoff import retrying
from bridge.errors import PublishUnavailable
from bridge.events import DLQ_TOKEN
from bridge.publisher import BatchResult, Publisher
from outbox.base import PendingRow
from outbox.runner import AsyncStore

log = logging.getLogger("cdc_bridge.relay")

OUTBOX_ID_HEADER = "Cdc-Outbox-Id"
OUTBOX_SEQ_HEADER = "Cdc-Outbox-Seq"


@dataclass(slots=True)
class RelayStats:
    published: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0


class Relay:
    def __init__(self, store: AsyncStore, publisher: Publisher, *, prefix: str,
                 batch: int = 2000, poll_interval_s: float = 1.0) -> None:
        self.store = store
        self.publisher = publisher
        self.prefix = prefix
        self.batch = batch
        self.poll_interval_s = poll_interval_s
        self.stats = RelayStats()
        self._stopping = asyncio.Event()
        self._down_since: float | None = None

    def stop(self) -> None:
        """Finish the batch in flight, then return from :meth:`run`."""
        self._stopping.set()
        self.store.appended.set()

    async def connect(self) -> None:
        async for attempt in retrying("connect to NATS", log, max_s=5.0):
            with attempt:
                if self._stopping.is_set():
                    return
                await self.publisher.connect()

    async def reconcile(self) -> int:
        """Drop outbox rows the stream already holds (crash after PubAck, before delete)."""
        hdrs = await self.publisher.last_message_headers()
        if not hdrs or hdrs.get(OUTBOX_ID_HEADER) != self.store.store_id:
            return 0
        try:
            seq = int(hdrs[OUTBOX_SEQ_HEADER])
        except (KeyError, ValueError):
            return 0
        removed = await self.store.remove(seq)
        if removed:
            log.info("reconciled: %d outbox rows were already in the stream", removed)
        return removed

    async def run(self) -> None:
        await self.connect()
        if self._stopping.is_set():
            return
        await self.reconcile()
        while not self._stopping.is_set():
            if not await self._publish_pending():
                await self._idle()

    async def _idle(self) -> None:
        self.store.appended.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.store.appended.wait(), self.poll_interval_s)

    async def _publish_pending(self) -> bool:
        """Publish one batch of pending rows, retrying until stored. False if none."""
        async for attempt in retrying("publish to JetStream", log, max_s=5.0):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.stats.retries += 1
                    if self._stopping.is_set():
                        return True
                rows = await self.store.pending(0, self.batch)
                if not rows:
                    return False
                await self._publish_once(rows)
        if self._down_since is not None:
            pending = (await self.store.stats()).pending
            log.info("JetStream recovered after %.1fs; draining %d pending",
                     time.monotonic() - self._down_since, pending)
            self._down_since = None
        return True

    async def _publish_once(self, rows: list[PendingRow]) -> None:
        """Publish ``rows``; remove the stored prefix; raise if the rest must be retried."""
        store_id = self.store.store_id
        extra = [{OUTBOX_ID_HEADER: store_id, OUTBOX_SEQ_HEADER: str(r.seq)} for r in rows]
        result = await self.publisher.publish_batch([r.message for r in rows], extra)
        await self._settle(rows, result)
        if result.error is not None:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("JetStream unavailable: %s", result.error)
            raise PublishUnavailable(str(result.error)) from result.error

    async def _settle(self, rows: list[PendingRow], result: BatchResult) -> None:
        for index, reason in result.poison:
            if index < result.stored:
                await self._dead_letter(rows[index], reason)
        if result.stored:
            await self.store.remove(rows[result.stored - 1].seq)
            self.stats.published += result.stored - len(result.poison)
            self.stats.duplicates += result.duplicates
            self.stats.batches += 1

    async def _dead_letter(self, row: PendingRow, reason: str) -> None:
        msg = row.message
        log.error("dead-lettering event %s (%s): %s", msg.msg_id, msg.subject, reason)
        adapter = msg.subject.split(".")[len(self.prefix.split("."))] if "." in msg.subject else "_"
        body = msg.payload if len(msg.payload) <= self.publisher.max_payload // 2 else b""
        headers = {
            "Nats-Msg-Id": "dlq-" + msg.msg_id,
            "Cdc-Reason": reason,
            "Cdc-Original-Subject": msg.subject,
            "Cdc-Original-Id": msg.msg_id,
            "Cdc-Original-Size": str(len(msg.payload)),
        }
        await self.publisher.publish_one(f"{self.prefix}.{DLQ_TOKEN}.{adapter}", body, headers)
        self.stats.dead_lettered += 1
