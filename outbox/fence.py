"""Fencing tokens for group mode: a write of a lease holder is checked in its own transaction.

In group mode (docs/group.md) several daemons share one PostgreSQL outbox, and each
adapter, and the relay, is owned by one member at a time through a lease
(:mod:`cdc_bridge.outbox.leases`). A lease's ``epoch`` grows by one on every change of
hands, so ``(resource, owner, epoch)`` is a fencing token: a write carrying it is
allowed only while that row still says so *and* the lease has not expired by the
database's clock. The check runs inside the write's transaction and locks the lease
row ``FOR KEY SHARE``. A takeover first locks the row ``FOR UPDATE``
(:meth:`cdc_bridge.outbox.leases.LeaseDb.acquire`), which waits for a write that passed
the check to commit, and a write that comes after a takeover fails: a paused or
cut-off member (a zombie) cannot commit anything once another owns its resource. A
renewal (an ``UPDATE`` of non-key columns) does not conflict with ``FOR KEY SHARE``, so
the owner's own writes never hold its renewals back.

A failed check raises :class:`LeaseLost`. It is a :class:`FatalError` for the retry
loops (retrying a write with a stale token is pointless) but the daemon catches it for
the one resource concerned: that adapter (or the relay) stops, and the member asks for
leases again on its next round.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Cursor, sql

from cdc_bridge.kernel.errors import FatalError
from cdc_bridge.outbox.base import (
    HeldRow,
    OutboxMessage,
    OutboxStore,
    PendingRow,
    SchemaState,
    StoreStats,
)

#: The lease name of the relay (adapter names are ``[a-z0-9_-]+``: no clash).
RELAY_RESOURCE = "_relay"


class LeaseLost(FatalError):
    """A write was refused: this member no longer holds the lease it carried."""


@dataclass(frozen=True, slots=True)
class Fence:
    """The token a lease holder writes with."""

    resource: str
    owner: str
    epoch: int

    def describe(self) -> str:
        return f"lease {self.resource} (owner {self.owner}, epoch {self.epoch})"


_CHECK = ("SELECT 1 FROM {s}.leases WHERE resource = %s AND owner = %s AND epoch = %s"
          " AND expires_at > clock_timestamp() FOR KEY SHARE")


def check_fence(cur: Cursor[Any], schema: sql.Identifier, fence: Fence) -> None:
    """Inside a transaction: raise :class:`LeaseLost` unless ``fence`` still holds."""
    cur.execute(sql.SQL(_CHECK).format(s=schema), (fence.resource, fence.owner, fence.epoch))
    if cur.fetchone() is None:
        raise LeaseLost(f"{fence.describe()} is no longer held: the write was refused")


class FencedStore:
    """A store whose relay-side calls (``pending``, ``remove``) carry the relay's fence.

    Wraps a :class:`cdc_bridge.outbox.postgres.PostgresStore` for the relay child of a
    group member; everything else is passed through unchanged.
    """

    def __init__(self, store: Any, fence: Fence) -> None:
        self._store = store
        self.fence = fence
        self.store_id: str = store.store_id

    def append(self, adapter: str, messages: list[OutboxMessage],
               checkpoint: dict[str, Any] | None, schemas: Sequence[SchemaState] = (),
               held: Sequence[HeldRow] = ()) -> int:
        return int(self._store.append(adapter, messages, checkpoint, schemas, held))

    def schema_states(self, adapter: str | None = None) -> list[tuple[str, SchemaState]]:
        value: list[tuple[str, SchemaState]] = self._store.schema_states(adapter)
        return value

    def release(self, adapter: str, table: str) -> int:
        return int(self._store.release(adapter, table))

    def held_counts(self) -> dict[tuple[str, str], int]:
        value: dict[tuple[str, str], int] = self._store.held_counts()
        return value

    def checkpoint(self, adapter: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self._store.checkpoint(adapter)
        return value

    def checkpoints(self) -> dict[str, dict[str, Any]]:
        value: dict[str, dict[str, Any]] = self._store.checkpoints()
        return value

    def forget(self, adapter: str) -> bool:
        return bool(self._store.forget(adapter))

    def pending(self, after_seq: int, limit: int) -> list[PendingRow]:
        rows: list[PendingRow] = self._store.pending(after_seq, limit, fence=self.fence)
        return rows

    def remove(self, up_to_seq: int) -> int:
        return int(self._store.remove(up_to_seq, fence=self.fence))

    def compact(self) -> None:
        self._store.compact()

    def stats(self) -> StoreStats:
        value: StoreStats = self._store.stats()
        return value

    def close(self) -> None:
        self._store.close()


def fenced(store: OutboxStore, fence: Fence | None) -> OutboxStore:
    """``store`` itself without a fence, else its :class:`FencedStore`."""
    return store if fence is None else FencedStore(store, fence)
