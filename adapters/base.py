"""The contract between adapters and the rest of the bridge.

An adapter is constructed from its validated config model and then asked for
:meth:`Adapter.changes`, an async iterator of :class:`ChangeBatch`. The daemon commits
each batch to the outbox (events, dead letters and ``checkpoint`` in one transaction)
and only then calls :meth:`Adapter.acknowledge` with that checkpoint: a source that can
forget (a replication slot, a file to archive) may do so from that point on.

On start the daemon passes the last committed checkpoint (``None`` on first run); the
adapter resumes exactly after it. Checkpoints are JSON-able dicts owned by each adapter.

Adapters raise :class:`bridge.errors.RetryableError` for transient failures (the
supervisor restarts them with back-off from the last checkpoint) and
:class:`bridge.errors.FatalError` for what needs a person.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from pydantic import Field

from bridge.events import ChangeEvent, DeadLetter, RoutedMessage
from bridge.model import StrictModel

Checkpoint = dict[str, Any]


@dataclass(slots=True)
class ChangeBatch:
    """Events (in source order) plus the checkpoint that the batch reaches."""

    events: list[ChangeEvent] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Messages with an adapter-chosen subject (e.g. ``type: outbox_table``), after events.
    messages: list[RoutedMessage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.dead_letters) + len(self.messages)


class AdapterConfig(StrictModel):
    """Base of every adapter's config block: strict, frozen, unknown keys rejected."""

    #: Unique; becomes a subject token, so lower case, digits, ``_`` and ``-`` only.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    type: str


class Adapter(Protocol):
    """What the daemon needs from a source."""

    name: str

    def changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        """Yield batches from just after ``checkpoint`` until cancelled (or input ends)."""
        ...

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        """Everything up to ``checkpoint`` is durably in the outbox."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What the daemon hands every adapter besides its own config."""

    state_dir: Path
    subject_prefix: str = "cdc"


@dataclass(frozen=True, slots=True)
class AdapterType:
    """A source type as registered in :mod:`adapters.registry` under its YAML ``type``."""

    name: str
    config_model: type[AdapterConfig]
    factory: Callable[[AdapterConfig, AdapterContext], Adapter]


class AdapterFactory(Protocol):
    """A registered adapter type: its config model and its constructor."""

    config_model: ClassVar[type[AdapterConfig]]

    def __call__(self, config: Any) -> Adapter: ...


@runtime_checkable
class SupportsSnapshot(Protocol):
    """Optional: an adapter that can re-snapshot tables on demand (``cdc-bridge snapshot``)."""

    async def request_snapshot(self, tables: list[str] | None) -> None:
        """Emit ``op: r`` events for ``tables`` (all when ``None``) through ``changes``."""
        ...


@runtime_checkable
class SupportsInit(Protocol):
    """Optional: an adapter with source-side set-up (``cdc-bridge init``)."""

    async def init(self) -> list[str]:
        """Create what capture needs (slot, publication, ...); return one line per action."""
        ...
