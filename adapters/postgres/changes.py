"""pgoutput messages and snapshot rows -> canonical change events. Pure, no I/O.

:class:`EventBuilder` keeps the relation cache (pgoutput sends a Relation message before
the first change of a table in each session and after each schema change) and turns one
decoded Insert/Update/Delete/Truncate into events:

* ``key``: the primary key (the replica identity's key columns; for REPLICA IDENTITY
  FULL, the primary key from the catalogue); ``None`` for tables without one (order is
  then per table).
* ``before``: updates and deletes carry what the replica identity gives: the whole old
  row with REPLICA IDENTITY FULL, otherwise the key columns only (taken from the new row
  when the key did not change).
* An unchanged TOASTed value, which the server does not send, becomes the string
  :data:`UNCHANGED_TOAST_PLACEHOLDER` (never ``null``, which would be a lie); masking
  leaves it as is.
* Column rules (exclude, mask) come from :mod:`cdc_bridge.adapters.transform`.
* Rows of ``outbox_tables`` are not change events: :meth:`EventBuilder.outbox_message`
  turns an inserted row into its routed message (:mod:`cdc_bridge.adapters.postgres.outbox`).

The event id is (commit LSN of the transaction, ordinal of the change in it): the same
after any redelivery, since the server resends a transaction whole and in order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cdc_bridge.adapters.filters import RowFilter
from cdc_bridge.adapters.postgres.outbox import row_message
from cdc_bridge.adapters.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
)
from cdc_bridge.adapters.postgres.position import orderable, sort_key
from cdc_bridge.adapters.postgres.setup import TableInfo
from cdc_bridge.adapters.postgres.shapes import TypeFacts, table_shape
from cdc_bridge.adapters.transform import ColumnRules, apply_rules, mask_value
from cdc_bridge.kernel.errors import DecodeError
from cdc_bridge.kernel.events import (
    UNCHANGED_TOAST_PLACEHOLDER,
    ChangeEvent,
    Op,
    RoutedMessage,
)
from cdc_bridge.kernel.shapes import TableShape

log = logging.getLogger("cdc_bridge.adapter.postgres")


class ValueConverter(TypeFacts, Protocol):
    def decode(self, type_oid: int, text: str, type_modifier: int = -1) -> Any: ...


@dataclass(frozen=True, slots=True)
class TxMeta:
    """The transaction a change belongs to."""

    position: str
    xid: int
    ts_ms: int


@dataclass(slots=True)
class RelationState:
    schema: str
    table: str
    qualified: str
    names: tuple[str, ...]
    oids: tuple[int, ...]
    mods: tuple[int, ...]
    key_idx: tuple[int, ...]
    rules: ColumnRules | None
    captured: bool
    #: One of ``outbox_tables``: inserts become routed messages, nothing else is emitted.
    outbox: bool = False
    #: A row filter the bridge evaluates (not applied by the publication), see
    #: :mod:`cdc_bridge.adapters.filters.rowfilter` for the rule.
    filter: RowFilter | None = None
    #: The table's look (:mod:`.shapes`), set by :meth:`EventBuilder.describe`; the same
    #: object on every event of this relation.
    shape: TableShape | None = None

    @property
    def key_oids(self) -> tuple[int, ...]:
        return tuple(self.oids[i] for i in self.key_idx)

    def key_orderable(self) -> bool:
        return orderable(self.key_oids)


class EventBuilder:
    def __init__(self, adapter: str, tables: Mapping[str, TableInfo],
                 values: ValueConverter,
                 outbox: Mapping[str, TableInfo] | None = None) -> None:
        self.adapter = adapter
        self.tables = tables
        self.values = values
        #: The ``outbox_tables`` (see :mod:`cdc_bridge.adapters.postgres.outbox`).
        self.outbox: Mapping[str, TableInfo] = outbox or {}
        self.relations: dict[int, RelationState] = {}
        self._ignored: set[str] = set()
        #: The last shape of each table: a look described again hands out the same object.
        self._shapes: dict[str, TableShape] = {}

    # ---------------------------------------------------------------- relations

    def relation(self, msg: Relation) -> RelationState:
        qualified = f"{msg.namespace}.{msg.name}"
        info = self.tables.get(qualified)
        outbox = self.outbox.get(qualified)
        names = tuple(c.name for c in msg.columns)
        if msg.replica_identity == "f" or not any(c.is_key for c in msg.columns):
            pk = info.primary_key if info else []
            key_idx = tuple(names.index(k) for k in pk if k in names)
        else:
            key_idx = tuple(i for i, c in enumerate(msg.columns) if c.is_key)
        state = RelationState(
            msg.namespace, msg.name, qualified, names,
            tuple(c.type_oid for c in msg.columns), tuple(c.type_modifier for c in msg.columns),
            key_idx, info.rules if info else None, info is not None, outbox is not None,
            info.bridge_filter if info else None)
        self.relations[msg.oid] = state
        if info is None and outbox is None and qualified not in self._ignored:
            self._ignored.add(qualified)  # never silent: say once what is dropped, and why
            log.warning("%s: relation %s is published but not configured: its changes are "
                        "ignored (a partition published without publish_via_partition_root, "
                        "or a table added to the publication by hand?)", self.adapter,
                        qualified)
        return state

    def table_state(self, info: TableInfo) -> RelationState:
        """The same shape for a snapshot of ``info`` (columns from the catalogue)."""
        names = tuple(c.name for c in info.columns)
        outbox = info.qualified in self.outbox
        state = RelationState(
            info.schema, info.name, info.qualified, names,
            tuple(c.type_oid for c in info.columns), tuple(c.type_modifier for c in info.columns),
            tuple(names.index(k) for k in info.primary_key), info.rules, not outbox, outbox,
            rf if (rf := info.row_filter) is not None and rf.uses_op else None)
        if state.captured:
            known = all(c.not_null is not None for c in info.columns)
            self.describe(state, {c.name: bool(c.not_null) for c in info.columns}
                          if known else None)
        return state

    def describe(self, rel: RelationState, not_null: Mapping[str, bool] | None
                 ) -> TableShape:
        """Set (and return) ``rel.shape``: its columns' look (``not_null``: ``attnotnull``
        by column name, when looked up). The same object as the table's last shape when
        the look is the same (a Relation message after a reconnect, a snapshot then the
        stream), so the outbox sees no change at all."""
        shape = table_shape(self.values, rel.names, rel.oids, rel.mods, rel.key_idx,
                            not_null, rel.rules)
        last = self._shapes.get(rel.qualified)
        if last is not None and last.fingerprint() == shape.fingerprint():
            shape = last
        else:
            self._shapes[rel.qualified] = shape
        rel.shape = shape
        return shape

    def shape_of(self, rel: RelationState) -> TableShape:
        """``rel``'s shape, described now (nullability unknown) if nobody did before."""
        shape = rel.shape
        return shape if shape is not None else self.describe(rel, None)

    def rel(self, oid: int) -> RelationState:
        try:
            return self.relations[oid]
        except KeyError:
            raise DecodeError(f"pgoutput: change for relation {oid} before its Relation "
                              "message") from None

    # ---------------------------------------------------------------- rows

    def decode_row(self, rel: RelationState, values: Sequence[Any]) -> dict[str, Any]:
        if len(values) != len(rel.names):
            raise DecodeError(f"{rel.qualified}: tuple has {len(values)} columns, relation "
                              f"has {len(rel.names)}")
        dec = self.values.decode
        out: dict[str, Any] = {}
        for name, oid, mod, v in zip(rel.names, rel.oids, rel.mods, values, strict=True):
            if v is None:
                out[name] = None
            elif v is UNCHANGED_TOAST:
                out[name] = UNCHANGED_TOAST_PLACEHOLDER
            else:
                out[name] = dec(oid, v if isinstance(v, str) else bytes(v).decode(), mod)
        return out

    def _shape(self, rel: RelationState, row: dict[str, Any] | None) -> dict[str, Any] | None:
        if row is None or rel.rules is None:
            return row
        shaped = apply_rules(row, rel.rules)
        assert shaped is not None
        for name in rel.rules.mask:
            if row.get(name) == UNCHANGED_TOAST_PLACEHOLDER and name in shaped:
                shaped[name] = UNCHANGED_TOAST_PLACEHOLDER
        return shaped

    def _key(self, rel: RelationState, row: dict[str, Any] | None) -> dict[str, Any] | None:
        if row is None or not rel.key_idx:
            return None
        key = {rel.names[i]: row[rel.names[i]] for i in rel.key_idx}
        if rel.rules is not None and rel.rules.mask:
            masked = set(rel.rules.mask)
            key = {k: mask_value(v, rel.rules.mask_salt) if k in masked else v
                   for k, v in key.items()}
        return key

    def _key_only(self, rel: RelationState, row: dict[str, Any]) -> dict[str, Any]:
        return {rel.names[i]: row[rel.names[i]] for i in rel.key_idx}

    def key_texts(self, rel: RelationState, values: Sequence[Any]) -> tuple[Any, ...] | None:
        """Comparable primary key of a raw tuple (snapshot-resume filters), if orderable."""
        if not rel.key_idx or not rel.key_orderable():
            return None
        return sort_key(rel.key_oids, [values[i] for i in rel.key_idx])

    # ---------------------------------------------------------------- events

    def event(self, rel: RelationState, op: Op, tx: TxMeta, index: int,
              before: dict[str, Any] | None, after: dict[str, Any] | None,
              extra: dict[str, Any]) -> ChangeEvent:
        return ChangeEvent(
            adapter=self.adapter, schema=rel.schema, table=rel.table, op=op,
            position=tx.position, index=index,
            key=self._key(rel, after if after is not None else before),
            before=self._shape(rel, before), after=self._shape(rel, after),
            txid=tx.xid, ts_ms=tx.ts_ms, source_extra=extra, shape=self.shape_of(rel))

    def change(self, msg: Insert | Update | Delete, rel: RelationState, tx: TxMeta,
               index: int, extra: dict[str, Any]) -> ChangeEvent | None:
        """The change's event; ``None`` when the table's bridge-side filter drops it."""
        op, before, after = self._rows(msg, rel)
        rf = rel.filter
        if rf is not None:
            routed = rf.route(op, before, after)
            if routed is None:
                return None
            op = routed[0]  # type: ignore[assignment]
            before = None if routed[1] is None else before
            after = None if routed[2] is None else after
        return self.event(rel, op, tx, index, before, after, extra)

    def _rows(self, msg: Insert | Update | Delete, rel: RelationState
              ) -> tuple[Op, dict[str, Any] | None, dict[str, Any] | None]:
        """The change's operation and decoded rows (before any column rule)."""
        if isinstance(msg, Insert):
            return "c", None, self.decode_row(rel, msg.new.values)
        if isinstance(msg, Update):
            after = self.decode_row(rel, msg.new.values)
            if msg.old is not None:
                before: dict[str, Any] = self.decode_row(rel, msg.old.values)
            elif msg.key is not None:
                before = self._key_only(rel, self.decode_row(rel, msg.key.values))
            else:
                before = self._key_only(rel, after)
            return "u", before, after
        old = msg.old if msg.old is not None else msg.key
        if old is None:
            raise DecodeError(f"{rel.qualified}: delete without old key")
        before = self.decode_row(rel, old.values)
        if msg.old is None:
            before = self._key_only(rel, before)
        return "d", before, None

    def truncates(self, msg: Truncate, tx: TxMeta, first_index: int,
                  extra: dict[str, Any]) -> list[tuple[int, ChangeEvent | None]]:
        """One ``t`` event per captured table (``None`` for tables not captured)."""
        out: list[tuple[int, ChangeEvent | None]] = []
        for i, oid in enumerate(msg.relation_oids):
            rel = self.rel(oid)
            ev = (self.event(rel, "t", tx, first_index + i, None, None,
                             {**extra, "cascade": msg.cascade,
                              "restart_identity": msg.restart_identity})
                  if rel.captured else None)
            out.append((first_index + i, ev))
        return out

    def outbox_message(self, rel: RelationState, values: Sequence[Any]) -> RoutedMessage:
        """An inserted (or snapshot) row of an outbox table -> its routed message.

        Raises :class:`cdc_bridge.adapters.postgres.outbox.OutboxRowError` for a malformed row.
        """
        return row_message(self.adapter, rel.names, rel.oids, values, self.values.decode)

    def snapshot_event(self, rel: RelationState, texts: Sequence[str | None], position: str,
                       ts_ms: int, extra: dict[str, Any]) -> ChangeEvent | None:
        """An ``r`` event (``None``: a filter reading ``op``, judged here, drops it)."""
        after = self.decode_row(rel, texts)
        if rel.filter is not None and not rel.filter.matches(after, "r"):
            return None
        return ChangeEvent(
            adapter=self.adapter, schema=rel.schema, table=rel.table, op="r",
            position=position, index=0, key=self._key(rel, after), before=None,
            after=self._shape(rel, after), txid=None, ts_ms=ts_ms, source_extra=extra,
            shape=self.shape_of(rel))
