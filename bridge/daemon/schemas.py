"""The daemon's side of schema evolution: per-adapter settings, paused tables, accepts.

Each adapter's :class:`~cdc_bridge.outbox.writer.OutboxWriter` gets its
:class:`~cdc_bridge.outbox.writer.SchemaSettings` from here (registry bucket, the
adapter's ``schema_changes`` policy, a listener for metrics, and the lock shared with
the release). ``cdc-bridge schema accept ADAPTER TABLE`` and ``POST /schema/accept``
queue a ``schema_accept`` request in the control channel; :meth:`SchemaControl.accept`
releases the table's held rows under that lock (so no batch is half encoded meanwhile)
and the table flows again. :meth:`SchemaControl.refresh` reads the tables' versions and
paused states for ``/status``, ``status`` and the metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from cdc_bridge import metrics
from cdc_bridge.adapters.contract import AdapterConfig
from cdc_bridge.config import BridgeConfig
from cdc_bridge.kernel.schemas import Verdict
from cdc_bridge.outbox.runner import AsyncStore
from cdc_bridge.outbox.writer import OutboxWriter, SchemaSettings

log = logging.getLogger("cdc_bridge.schemas")


def resolve_table(known: list[str], table: str) -> str | None:
    """The stored ``schema.table`` an operator's ``table`` names: itself, or the one
    table whose name part it is (``orders`` for ``public.orders``); ``None`` if none or
    ambiguous."""
    if table in known:
        return table
    matches = [t for t in known if t.split(".", 1)[-1] == table]
    return matches[0] if len(matches) == 1 else None


class SchemaControl:
    """Schema settings, state and releases for every adapter of one daemon."""

    def __init__(self, config: BridgeConfig, store: Callable[[], AsyncStore | None]) -> None:
        self.config = config
        self._store = store
        self.enabled = config.nats.schema_registry.enabled
        self.bucket = config.nats.schemas_bucket()
        self.locks: dict[str, asyncio.Lock] = {}
        self.writers: dict[str, OutboxWriter] = {}
        #: adapter -> table -> {"version", "paused", "held"} (``refresh``).
        self.tables: dict[str, dict[str, dict[str, Any]]] = {}

    def _lock(self, adapter: str) -> asyncio.Lock:
        lock = self.locks.get(adapter)
        if lock is None:
            lock = self.locks[adapter] = asyncio.Lock()
        return lock

    def settings(self, cfg: AdapterConfig) -> SchemaSettings | None:
        if not self.enabled:
            return None
        return SchemaSettings(self.bucket, cfg.schema_changes, self._changed,
                              self._lock(cfg.name))

    @staticmethod
    def _changed(adapter: str, table: str, old: int | None, new: int, verdict: Verdict,
                 paused: bool) -> None:
        metrics.SCHEMA_VERSION.labels(adapter, table).set(new)
        if old is not None:
            metrics.SCHEMA_CHANGES.labels(adapter, verdict).inc()
        metrics.TABLE_PAUSED.labels(adapter, table).set(1 if paused else 0)

    async def accept(self, adapter: str, table: str) -> str:
        """Release ``adapter``'s paused ``table``; returns what happened, for people.
        Raises :class:`LookupError` for an unknown adapter or table."""
        store = self._store()
        if store is None:
            raise LookupError("the outbox is not open yet")
        if adapter not in {a.name for a in self.config.adapter_configs}:
            raise LookupError(f"no adapter named {adapter!r}")
        async with self._lock(adapter):
            states = {st.table: st for _, st in await store.schema_states(adapter)}
            name = resolve_table(sorted(states), table)
            if name is None:
                raise LookupError(f"adapter {adapter} has no captured table {table!r} "
                                  f"(tables: {', '.join(sorted(states)) or 'none yet'})")
            if states[name].paused is None:
                return f"{adapter} {name}: not paused (schema v{states[name].version})"
            writer = self.writers.get(adapter)
            moved = await (writer.release(name) if writer is not None
                           else store.release(adapter, name))
        metrics.TABLE_PAUSED.labels(adapter, name).set(0)
        metrics.SCHEMA_HELD.labels(adapter, name).set(0)
        log.warning("%s: schema v%d of table %s accepted: %d held events released", adapter,
                    states[name].version, name, moved, extra={"table": name})
        return (f"{adapter} {name}: schema v{states[name].version} accepted, {moved} held "
                f"events released")

    async def refresh(self) -> None:
        """Read every table's version, paused state and held rows (for status/metrics)."""
        store = self._store()
        if store is None or not self.enabled:
            return
        held = await store.held_counts()
        tables: dict[str, dict[str, dict[str, Any]]] = {}
        for adapter, st in await store.schema_states():
            n = held.get((adapter, st.table), 0)
            tables.setdefault(adapter, {})[st.table] = {
                "version": st.version, "paused": st.paused, "held": n}
            metrics.SCHEMA_VERSION.labels(adapter, st.table).set(st.version)
            metrics.TABLE_PAUSED.labels(adapter, st.table).set(1 if st.paused else 0)
            if st.paused or n:
                metrics.SCHEMA_HELD.labels(adapter, st.table).set(n)
        self.tables = tables
