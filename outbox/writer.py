"""Turn a source's :class:`cdc_bridge.kernel.batch.ChangeBatch` into outbox messages; commit it.

Encoding (CloudEvents JSON, subject, headers) happens here, once, in the capture path;
the relay then only moves bytes. The commit itself runs on the store's capture thread
(:class:`cdc_bridge.outbox.runner.AsyncStore`), and wakes the relay.
"""

from __future__ import annotations

import time

from cdc_bridge.kernel.batch import ChangeBatch
from cdc_bridge.kernel.events import dead_letter_subject
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.outbox.runner import AsyncStore


def encode_batch(batch: ChangeBatch, prefix: str) -> list[OutboxMessage]:
    now = int(time.time() * 1000)
    out = [OutboxMessage(*ev.outbox_parts(prefix), None, now) for ev in batch.events]
    out.extend(
        OutboxMessage(m.id, f"{prefix}.{m.subject}", m.body,
                      dict(m.headers) if m.headers else None, now)
        for m in batch.messages
    )
    out.extend(
        OutboxMessage(dl.id, dead_letter_subject(prefix, dl.adapter), dl.payload, dl.headers(), now)
        for dl in batch.dead_letters
    )
    return out


class OutboxWriter:
    """Commits batches for one adapter: events, dead letters and checkpoint together."""

    def __init__(self, store: AsyncStore, adapter: str, prefix: str) -> None:
        self.store = store
        self.adapter = adapter
        self.prefix = prefix

    async def commit(self, batch: ChangeBatch) -> int:
        messages = encode_batch(batch, self.prefix)
        return await self.store.append(self.adapter, messages, batch.checkpoint)
