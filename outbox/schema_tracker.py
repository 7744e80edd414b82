"""Number each table's schema versions on the capture path, and hold a paused table's rows.

One :class:`SchemaTracker` per adapter writer. For every event with a
:class:`~cdc_bridge.kernel.schemas.TableShape` it finds the table's version: an
identity lookup for a shape already seen (the common case, one dict lookup per row);
otherwise the shape's fingerprint is compared with the table's latest version as the
outbox stores it (:class:`~cdc_bridge.outbox.base.SchemaState`), and a different look
becomes the next version. A new version brings:

- its registry entry (:func:`~cdc_bridge.kernel.schemas.registry_entry`) in the table's
  new state, stored in the SAME transaction as the batch (so a crash before the commit
  gives the re-read change the same number, and after it no second number);
- a schema-change event, placed before the first row event of the version in the
  batch's messages, hence before it in the stream. Its headers carry the registry key
  (:data:`SCHEMA_ENTRY`): the relay puts the entry into the registry bucket before it
  publishes the event (:mod:`cdc_bridge.relay.registry`);
- the policy's decision (:class:`~cdc_bridge.kernel.schema_policy.SchemaPolicy`): a
  breaking change under ``pause`` marks the table paused; from then on its events are
  *held* (stored with the batch, not pending) until
  :meth:`cdc_bridge.outbox.base.OutboxStore.release`.

State changes are tentative until :meth:`SchemaTracker.committed`; after a failed
append the writer calls :meth:`SchemaTracker.rolled_back` and the next batch numbers
from the stored state again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cdc_bridge.kernel.events import ChangeEvent, SchemaRef, dumps
from cdc_bridge.kernel.schema_policy import SchemaPolicy
from cdc_bridge.kernel.schemas import (
    SCHEMA_EVENT_TYPE,
    TableShape,
    Verdict,
    registry_entry,
    registry_key,
    schema_event_data,
    schema_event_id,
    schema_subject,
    schema_uri,
    table_ref,
)
from cdc_bridge.kernel.tracecontext import TRACEPARENT, traceparent
from cdc_bridge.kernel.wire import SCHEMA_ENTRY
from cdc_bridge.outbox.base import OutboxMessage, SchemaState

log = logging.getLogger("cdc_bridge.schemas")

#: Told of every new version once its batch is committed:
#: ``(adapter, table, old version or None, new version, verdict, paused)``.
ChangeListener = Callable[[str, str, "int | None", int, Verdict, bool], None]


@dataclass(slots=True)
class _Change:
    table: str
    old: int | None
    new: int
    verdict: Verdict
    paused: bool


@dataclass(slots=True)
class Resolved:
    """What one batch's encoding decided (applied by :meth:`SchemaTracker.committed`)."""

    states: dict[str, SchemaState] = field(default_factory=dict)
    changes: list[_Change] = field(default_factory=list)


class SchemaTracker:
    """Versions of one adapter's tables (see the module docstring)."""

    def __init__(self, adapter: str, prefix: str, bucket: str, policy: SchemaPolicy,
                 stored: list[SchemaState], *, sample_ratio: float = 1.0,
                 listener: ChangeListener | None = None) -> None:
        self.adapter = adapter
        self.prefix = prefix
        self.bucket = bucket
        self.policy = policy
        self.sample_ratio = sample_ratio
        self.listener = listener
        self._stored: dict[str, SchemaState] = {st.table: st for st in stored}
        #: shape -> (its schema ref, its table ref, schema, table); identity keys
        #: (TableShape has eq=False). One shape object may serve several tables (a files
        #: layout): a hit for another table goes to ``_shared``.
        self._known: dict[TableShape, tuple[SchemaRef, str, str | None, str]] = {}
        self._shared: dict[tuple[TableShape, str | None, str],
                           tuple[SchemaRef, str, str | None, str]] = {}
        #: Tables paused now (committed or tentatively).
        self.paused: set[str] = {t for t, st in self._stored.items() if st.paused}
        self._pending: Resolved | None = None

    # -- per event ---------------------------------------------------------------------

    def ref(self, ev: ChangeEvent, shape: TableShape, out: list[OutboxMessage], now: int
            ) -> tuple[SchemaRef, str]:
        """The schema reference of ``ev`` (whose ``shape`` is given), appending a
        schema-change event to ``out`` when the shape is a new version."""
        hit = self._known.get(shape)
        if hit is not None:
            if hit[3] == ev.table and hit[2] == ev.schema:
                return hit[0], hit[1]
            shared = self._shared.get((shape, ev.schema, ev.table))
            if shared is not None:
                return shared[0], shared[1]
        table = table_ref(ev.schema, ev.table)
        pending = self._pending
        if pending is None:
            pending = self._pending = Resolved()
        state = pending.states.get(table) or self._stored.get(table)
        fingerprint = shape.fingerprint()
        if state is None or state.fingerprint != fingerprint:
            state = self._new_version(ev, shape, state, fingerprint, out, now, pending)
        uri = schema_uri(self.bucket, self.adapter, ev.schema, ev.table, state.version)
        found = ((uri, state.version), table, ev.schema, ev.table)
        if len(self._known) > 4096 or len(self._shared) > 4096:
            self._known.clear()
            self._shared.clear()
        if hit is None:
            self._known[shape] = found
        else:
            self._shared[(shape, ev.schema, ev.table)] = found
        return found[0], found[1]

    def _new_version(self, ev: ChangeEvent, shape: TableShape, old: SchemaState | None,
                     fingerprint: str, out: list[OutboxMessage], now: int,
                     pending: Resolved) -> SchemaState:
        version = 1 if old is None else old.version + 1
        entry = registry_entry(self.adapter, ev.schema, ev.table, version, shape, self.bucket)
        data = schema_event_data(self.adapter, ev.schema, ev.table,
                                 None if old is None else old.entry, entry, self.bucket)
        verdict: Verdict = data["verdict"]
        paused = old.paused if old is not None else None
        if old is not None and paused is None \
                and self.policy.action(ev.schema, ev.table, verdict) == "pause":
            paused = (f"breaking schema change (verdict {verdict}) from v{old.version} to "
                      f"v{version}: held until `cdc-bridge schema accept {self.adapter} "
                      f"{table_ref(ev.schema, ev.table)}`")
        state = SchemaState(table_ref(ev.schema, ev.table), version, fingerprint, entry,
                            paused)
        pending.states[state.table] = state
        pending.changes.append(_Change(state.table, None if old is None else old.version,
                                       version, verdict, paused is not None))
        if paused is not None:
            self.paused.add(state.table)
        out.append(self._schema_message(ev, version, data, now))
        return state

    def _schema_message(self, ev: ChangeEvent, version: int, data: dict[str, Any], now: int
                        ) -> OutboxMessage:
        eid = schema_event_id(self.adapter, ev.schema, ev.table, version)
        parent = traceparent(eid, self.sample_ratio)
        body: dict[str, Any] = {
            "specversion": "1.0",
            "id": eid,
            "traceparent": parent,
            "source": f"/cdc-bridge/{self.adapter}",
            "type": SCHEMA_EVENT_TYPE,
            "subject": table_ref(ev.schema, ev.table),
            "datacontenttype": "application/json",
            "dataschema": data["entry"]["uri"],
            "partitionkey": table_ref(ev.schema, ev.table),
            "data": data,
        }
        headers = {SCHEMA_ENTRY: registry_key(self.adapter, ev.schema, ev.table, version),
                   TRACEPARENT: parent}
        return OutboxMessage(eid, schema_subject(self.prefix, self.adapter, ev.schema,
                                                 ev.table), dumps(body), headers, now)

    def held_table(self, ev: ChangeEvent, table: str | None) -> str | None:
        """The table ``ev`` is held under (its table is paused), else ``None``."""
        if table is None:
            table = table_ref(ev.schema, ev.table)
        return table if table in self.paused else None

    # -- per batch ---------------------------------------------------------------------

    def take(self) -> list[SchemaState]:
        """The states this batch changes (to store with it)."""
        return list(self._pending.states.values()) if self._pending else []

    def committed(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._stored.update(pending.states)
        for c in pending.changes:
            level = logging.INFO if c.verdict == "full" else logging.WARNING
            log.log(level, "%s: table %s schema v%s -> v%d (%s)%s", self.adapter, c.table,
                    c.old if c.old is not None else "-", c.new, c.verdict,
                    ": PAUSED, its events are held" if c.paused and c.old is not None
                    and self._stored[c.table].paused else "",
                    extra={"table": c.table, "schema_version": c.new, "verdict": c.verdict})
            if self.listener is not None:
                self.listener(self.adapter, c.table, c.old, c.new, c.verdict, c.paused)

    def rolled_back(self) -> None:
        self._pending = None
        self._known.clear()
        self._shared.clear()
        self.paused = {t for t, st in self._stored.items() if st.paused}

    def released(self, table: str) -> None:
        """``table`` was accepted (its held rows released): it flows again."""
        self.paused.discard(table)
        st = self._stored.get(table)
        if st is not None:
            self._stored[table] = replace(st, paused=None)

    def versions(self) -> dict[str, int]:
        return {t: st.version for t, st in self._stored.items()}


def now_ms() -> int:
    return int(time.time() * 1000)
