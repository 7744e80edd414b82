"""The outbox store contract, shared by every backend (SQLite, PostgreSQL).

A store holds three things:

- pending messages, each with a ``seq`` that increases by exactly one per message
  (no gaps: a rolled-back append gives its numbers back), so the relay publishes in
  ``seq`` order, which keeps per-adapter source order, hence per-key order;
- one checkpoint per adapter, written in the SAME transaction as that batch's
  messages (:meth:`OutboxStore.append`), so a crash leaves both or neither;
- each adapter's table schemas (:class:`SchemaState`: the latest version, its registry
  entry, and whether the table is paused by a breaking change), written in the same
  transaction as the batch that first uses them, so a version is numbered once;
- the held rows of a paused table (in order, unpublished, :meth:`OutboxStore.release`
  moves them into the pending rows, after the last one);
- nothing else for long: published rows are deleted (:meth:`OutboxStore.remove`),
  always as a prefix (``seq <= n``), and :meth:`OutboxStore.compact` gives the space
  back to the file system where the backend needs help for that.

Because appends are serialised and ``seq`` is gap-free, a reader never sees ``seq``
``n + 1`` committed while ``n`` is still to come, and the pending count is
``last - first + 1`` (cheap, exact) rather than a table scan.

Stores are synchronous; the daemon drives them from worker threads (see
:mod:`cdc_bridge.outbox.runner`) so that a slow disk never stalls the event loop. Each backend
must pass :mod:`tests.test_outbox_conformance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from cdc_bridge.kernel.errors import FatalError, RetryableError


class OutboxMessage(NamedTuple):
    """A message ready to publish: subject, body and headers are final.

    A named tuple rather than a frozen dataclass: one is built per event on the capture
    path and per row on the relay path, and a tuple is several times cheaper to build.
    """

    msg_id: str
    subject: str
    payload: bytes
    headers: dict[str, str] | None = None
    #: Milliseconds since the epoch when the change was captured (for lag metrics).
    created_ms: int = 0


class PendingRow(NamedTuple):
    seq: int
    message: OutboxMessage


@dataclass(frozen=True, slots=True)
class StoreStats:
    pending: int
    oldest_pending_ms: int | None
    size_bytes: int | None
    #: ``seq`` of the first pending row and of the last row ever appended (0 if none).
    first_seq: int = 0
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class SchemaState:
    """The latest schema version of one table of one adapter (docs/schemas.md)."""

    #: ``<schema>.<table>`` (:func:`cdc_bridge.kernel.schemas.table_ref`).
    table: str
    version: int
    fingerprint: str
    #: The registry document of that version.
    entry: dict[str, Any]
    #: Why the table is paused (held), or ``None``.
    paused: str | None = None


#: A row held back for a paused table: ``(table, message)``.
HeldRow = tuple[str, OutboxMessage]


class OutboxStore(Protocol):
    """What every outbox backend implements (see :mod:`tests.test_outbox_conformance`)."""

    #: Stable identity of this store (same across restarts), for reconciliation.
    store_id: str

    def append(
        self, adapter: str, messages: list[OutboxMessage], checkpoint: dict[str, Any] | None,
        schemas: Sequence[SchemaState] = (), held: Sequence[HeldRow] = (),
    ) -> int:
        """Append ``messages``, set ``adapter``'s checkpoint, store its changed table
        ``schemas`` (replacing each table's previous state) and its ``held`` rows, all
        in one transaction. A held row of a table that is not paused in the store (after
        ``schemas``: released by another process since the caller decided) is appended
        as pending instead, after ``messages``.

        Returns the ``seq`` of the last message appended (or the current last ``seq``).
        """
        ...

    def schema_states(self, adapter: str | None = None) -> list[tuple[str, SchemaState]]:
        """``(adapter, state)`` of every table of ``adapter`` (``None``: of all)."""
        ...

    def release(self, adapter: str, table: str) -> int:
        """Un-pause ``table`` of ``adapter``: its held rows become pending (after every
        pending row, in the order they were held), in one transaction. Returns how many
        rows were held; raises :class:`KeyError` for a table with no schema state."""
        ...

    def held_counts(self) -> dict[tuple[str, str], int]:
        """Rows held per ``(adapter, table)`` (only tables holding some)."""
        ...

    def checkpoint(self, adapter: str) -> dict[str, Any] | None:
        """The adapter's last committed checkpoint, or ``None``."""
        ...

    def checkpoints(self) -> dict[str, dict[str, Any]]:
        """All adapters' checkpoints."""
        ...

    def forget(self, adapter: str) -> bool:
        """Delete the adapter's checkpoint (``cdc-bridge reset-source``); ``True`` if
        there was one. Its pending rows stay and are published."""
        ...

    def pending(self, after_seq: int, limit: int) -> list[PendingRow]:
        """Up to ``limit`` rows with ``seq > after_seq``, in ``seq`` order."""
        ...

    def remove(self, up_to_seq: int) -> int:
        """Delete published rows with ``seq <= up_to_seq``; returns how many."""
        ...

    def compact(self) -> None:
        """Give the space of removed rows back (cheap when there is nothing to do)."""
        ...

    def stats(self) -> StoreStats: ...

    def close(self) -> None: ...


class StoreUnavailable(RetryableError):
    """The store's database cannot be reached right now (PostgreSQL down, cut, restarting)."""


class StoreDamaged(FatalError):
    """The store's file is not a database any more (truncated, overwritten, corrupt):
    waiting will not fix it; the message names the file and the way out."""
