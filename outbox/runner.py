"""Drive a synchronous :class:`cdc_bridge.outbox.base.OutboxStore` from asyncio.

Two single-thread executors: one for capture (appends), one for the relay (reads and
deletes), so a long append never delays publishing and vice versa. Every append sets
``appended``, the event the relay waits on when it has nothing to do.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cdc_bridge.outbox.base import (
    HeldRow,
    OutboxMessage,
    OutboxStore,
    PendingRow,
    SchemaState,
    StoreStats,
)
from cdc_bridge.outbox.fence import Fence


class AsyncStore:
    def __init__(self, store: OutboxStore) -> None:
        self.store = store
        self.appended = asyncio.Event()
        self._capture = ThreadPoolExecutor(1, thread_name_prefix="outbox-capture")
        self._relay = ThreadPoolExecutor(1, thread_name_prefix="outbox-relay")

    @property
    def store_id(self) -> str:
        return self.store.store_id

    async def append(
        self, adapter: str, messages: list[OutboxMessage], checkpoint: dict[str, Any] | None,
        schemas: Sequence[SchemaState] = (), held: Sequence[HeldRow] = (),
        *, fence: Fence | None = None,
    ) -> int:
        """``fence`` (group mode; PostgreSQL stores only): see
        :mod:`cdc_bridge.outbox.fence`."""
        loop = asyncio.get_running_loop()
        call = functools.partial(self.store.append, adapter, messages, checkpoint, schemas,
                                 held)
        if fence is not None:
            call = functools.partial(self.store.append, adapter, messages, checkpoint,
                                     schemas, held, fence=fence)  # type: ignore[call-arg]
        seq = await loop.run_in_executor(self._capture, call)
        if messages or held:  # (held rows of a table released meanwhile become pending)
            self.appended.set()
        return seq

    async def schema_states(self, adapter: str | None = None
                            ) -> list[tuple[str, SchemaState]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._capture, self.store.schema_states, adapter)

    async def release(self, adapter: str, table: str) -> int:
        """On the capture thread, so it is ordered with the adapter's appends."""
        loop = asyncio.get_running_loop()
        moved = await loop.run_in_executor(self._capture, self.store.release, adapter, table)
        if moved:
            self.appended.set()
        return moved

    async def held_counts(self) -> dict[tuple[str, str], int]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._relay, self.store.held_counts)

    async def checkpoint(self, adapter: str) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._capture, self.store.checkpoint, adapter)

    async def pending(self, after_seq: int, limit: int) -> list[PendingRow]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._relay, self.store.pending, after_seq, limit)

    async def remove(self, up_to_seq: int) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._relay, self.store.remove, up_to_seq)

    async def compact(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._relay, self.store.compact)

    async def stats(self) -> StoreStats:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._relay, self.store.stats)

    def close(self) -> None:
        self._capture.shutdown(wait=True)
        self._relay.shutdown(wait=True)
        self.store.close()
