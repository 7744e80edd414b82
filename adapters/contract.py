"""The source contract: everything a source implements and everything it may report.

A source type is a config model plus a factory, registered in its own package with
one line (``ADAPTER_TYPE = AdapterType("name", Config, factory)``); the registry
(:mod:`cdc_bridge.adapters.registry`) finds it there. The daemon builds the source
from its validated config and then:

1. calls :meth:`Adapter.changes` with the last committed checkpoint (``None`` on the
   first run) and reads :class:`~cdc_bridge.kernel.batch.ChangeBatch` items; the
   source resumes exactly after that checkpoint;
2. commits each batch to the outbox (events, dead letters and checkpoint in one
   transaction), and only then calls :meth:`Adapter.acknowledge` with its checkpoint:
   a source that can forget (a replication slot, a file to archive) may do so now;
3. reads :attr:`Adapter.connected` (readiness) and :meth:`Adapter.lag` about once a
   second; the daemon alone turns them into metrics (``cdc_adapter_up``,
   ``cdc_source_lag``) and ``/status``;
4. calls :meth:`Adapter.close` once capture stops (a second call is harmless).

Errors (from :mod:`cdc_bridge.kernel.errors`): :class:`RetryableError` for transient
failures, e.g. :class:`SourceUnavailable` (the supervisor restarts the source with
back-off from its last checkpoint); :class:`FatalError`, e.g.
:class:`SourceSetupError` for a missing privilege, for what needs a person.

Optional capabilities, each a runtime-checkable protocol: :class:`SupportsInit`
(``cdc-bridge init``), :class:`SupportsSnapshot` (on-demand re-snapshots) and, with it,
:class:`SupportsPartialSnapshot` (``--where``: only the matching rows) and
:class:`ReportsSnapshotProgress` (exact, committed progress: :class:`SnapshotReport`);
a refused request raises :class:`SnapshotRequestError`. :class:`ReportsTableHealth`:
tables set aside by their own fatal error while the others flow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import Field

from cdc_bridge.kernel.batch import ChangeBatch, Checkpoint
from cdc_bridge.kernel.errors import (
    FatalError,
    RetryableError,
    SnapshotRequestError,
    SourceSetupError,
    SourceUnavailable,
)
from cdc_bridge.kernel.model import StrictModel
from cdc_bridge.kernel.schema_policy import SchemaPolicy
from cdc_bridge.kernel.subjects import ANY, SubjectScope

__all__ = [
    "Adapter",
    "AdapterConfig",
    "AdapterContext",
    "AdapterType",
    "ChangeBatch",
    "Checkpoint",
    "FatalError",
    "ReportsSnapshotProgress",
    "ReportsTableHealth",
    "RetryableError",
    "SnapshotReport",
    "SnapshotRequestError",
    "SourceSetupError",
    "SourceUnavailable",
    "SupportsInit",
    "SupportsPartialSnapshot",
    "SupportsReset",
    "SupportsSnapshot",
]


class AdapterConfig(StrictModel):
    """Base of every source's config block: strict, frozen, unknown keys rejected."""

    #: Unique; becomes a subject token, so lower case, digits, ``_`` and ``-`` only.
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)
    type: str
    #: What a breaking change of a table's schema does (docs/schemas.md).
    schema_changes: SchemaPolicy = SchemaPolicy()

    def subject_scopes(self) -> list[SubjectScope]:
        """Which subject template covers which of this source's tables (docs/subjects.md).
        A source without ``subject:`` keys: every table on the default subject."""
        return [SubjectScope(ANY, ANY, None)]


@dataclass(frozen=True, slots=True)
class AdapterContext:
    """What the daemon hands every source besides its own config."""

    state_dir: Path
    subject_prefix: str = "cdc"
    #: The outbox store's id (``None`` outside the daemon): a source that keeps state on
    #: the source side (a replication slot) records whose it is, and refuses another's.
    store_id: str | None = None


class Adapter(Protocol):
    """What the daemon needs from a source."""

    name: str

    @property
    def connected(self) -> bool:
        """Readiness: the source is reachable and capturing (``/readyz``, ``cdc_adapter_up``)."""
        ...

    def lag(self) -> dict[str, float]:
        """How far behind the source capture is, by unit (``bytes``, ``seconds``); may be
        empty. Read by the daemon about once a second (``cdc_source_lag``, ``status``)."""
        ...

    def changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        """Yield batches from just after ``checkpoint`` until cancelled (or input ends)."""
        ...

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        """Everything up to ``checkpoint`` is durably in the outbox."""
        ...

    async def close(self) -> None:
        """Release connections and files; calling it twice is harmless."""
        ...


@dataclass(frozen=True, slots=True)
class AdapterType:
    """A source type under its YAML ``type`` name: config model and factory."""

    name: str
    config_model: type[AdapterConfig]
    factory: Callable[[AdapterConfig, AdapterContext], Adapter]


@runtime_checkable
class SupportsInit(Protocol):
    """Optional: source-side set-up (``cdc-bridge init``)."""

    async def init(self) -> list[str]:
        """Create what capture needs (slot, publication, ...); return one line per action."""
        ...


@runtime_checkable
class ReportsTableHealth(Protocol):
    """Optional: a source of several tables that sets one aside on a fatal error of its
    own (a table dropped, a column it cannot read) while the others keep flowing."""

    def failed_tables(self) -> dict[str, str]:
        """Tables set aside, with the reason; shown in ``status`` and as
        ``cdc_table_failed``. Empty when all is well."""
        ...


@runtime_checkable
class SupportsReset(Protocol):
    """Optional: forget the source-side state (``cdc-bridge reset-source``), so that the
    next start begins afresh (for example: drop the replication slot)."""

    async def reset(self) -> list[str]:
        """Undo what capture left at the source; return one line per action."""
        ...


@runtime_checkable
class SupportsTakeover(Protocol):
    """Optional (group mode, docs/group.md): the daemon has just taken this source over
    from another member, which may still hold a session the source allows only once
    (a replication slot): end that session so capture can start now rather than when
    the source times it out. Called before ``changes`` while the new lease holds; the
    old member's writes are refused by the outbox (fencing) whatever it still reads."""

    async def take_over(self) -> list[str]:
        """End other sessions on this source's exclusive resources; one line per action."""
        ...


@runtime_checkable
class SupportsSnapshot(Protocol):
    """Optional: re-snapshot tables on demand (``cdc-bridge snapshot``, ``POST /snapshot``)."""

    async def request_snapshot(self, tables: list[str] | None) -> None:
        """Emit ``op: r`` events for ``tables`` (all when ``None``) through ``changes``.

        Raises :class:`SnapshotRequestError` for a request the source refuses."""
        ...


@runtime_checkable
class SupportsPartialSnapshot(Protocol):
    """Optional, with :class:`SupportsSnapshot`: partial backfills
    (``cdc-bridge snapshot ADAPTER TABLE --where EXPR``, docs/filters.md).

    The source sets :attr:`partial_snapshots` (the mark this protocol is told by, since
    ``request_snapshot`` itself is :class:`SupportsSnapshot`'s) and accepts ``where``."""

    #: Always ``True``: ``request_snapshot`` takes ``where``.
    partial_snapshots: bool

    async def request_snapshot(self, tables: list[str] | None, where: str | None = None
                               ) -> None:
        """As :meth:`SupportsSnapshot.request_snapshot`, reading only the rows matching
        ``where`` (an expression of the row-filter language, without ``op``; ``None``:
        every row), AND the table's own ``filter``. The ``where`` is kept with the run's
        progress, so a resumed run reads the same rows. Raises
        :class:`SnapshotRequestError` for a ``where`` the source refuses (a column the
        table lacks, a comparison the database rejects)."""
        ...


@dataclass(frozen=True, slots=True)
class SnapshotReport:
    """A source's account of its re-snapshots (see :class:`ReportsSnapshotProgress`)."""

    #: Number of the latest request the source has taken (0: none).
    requested: int
    #: Number of the run described by the source's last committed checkpoint.
    committed: int
    #: Rows read (``op: r`` committed) by that run, and its estimated total.
    rows: int
    total: int
    #: That committed run is finished.
    done: bool

    @classmethod
    def of(cls, requested: RunState | None, committed: RunState | None) -> SnapshotReport:
        """The report from the latest requested run and the one the committed checkpoint
        describes (a source keeps both; ``None``: none yet)."""
        return cls(requested.seq if requested else 0, committed.seq if committed else 0,
                   committed.rows if committed else 0, committed.total if committed else 0,
                   bool(committed and committed.finished))


class RunState(Protocol):
    """What a source's re-snapshot run record tells :meth:`SnapshotReport.of`."""

    seq: int
    rows: int
    total: int
    finished: bool


@runtime_checkable
class ReportsSnapshotProgress(Protocol):
    """Optional, with :class:`SupportsSnapshot`: exact progress and completion."""

    def snapshot_progress(self) -> SnapshotReport | None:
        """``None`` until the source has loaded its checkpoint."""
        ...
