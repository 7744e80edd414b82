"""Binlog records to change events: transactions, ids, checkpoints, filters. Pure, no I/O.

The reader (:mod:`.stream`) turns what mysql-replication decodes into the plain records
below; :class:`TxAssembler` turns those into :class:`~cdc_bridge.kernel.events.ChangeEvent`
items and keeps the :class:`~.position.Position` the outbox checkpoint is made of.

Transactions. MariaDB opens each with a GTID event (``domain-server-seq``), MySQL with a
GTID event and ``BEGIN``; rows follow; an ``XID`` event (or a ``COMMIT`` query) ends it.
A DDL statement is a transaction of its own (a standalone GTID and one query). Each
change's id is made from its transaction's start position and its ordinal in that
transaction, so a transaction read again after a restart (also from the middle, see
``tx`` in :mod:`.position`) gives the same ids.

Statements. ``TRUNCATE`` of a captured table is one ``op: t`` event; other DDL on a
captured table (``ALTER``, ``RENAME``, ``DROP``, ``CREATE``) is reported through
:attr:`TxAssembler.ddl_tables` so the reader refreshes what it keeps of the table (the
column layout itself comes with every row event's table map, at its exact position).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from cdc_bridge.adapters.filters import RowFilter, row_filter
from cdc_bridge.adapters.mysql_binlog.position import BinlogPos, Position, already_copied
from cdc_bridge.adapters.mysql_binlog.shapes import ColumnFacts, table_shape
from cdc_bridge.adapters.transform import ColumnRules, apply_rules, mask_value
from cdc_bridge.kernel.events import ChangeEvent, Op
from cdc_bridge.kernel.shapes import TableShape

Row = dict[str, Any]


@dataclass(slots=True)
class TxBegin:
    start: BinlogPos
    gtid: str | None
    ts_ms: int
    #: Rows follow until an XID/COMMIT (MariaDB's non-standalone GTID); ``False``: a
    #: single statement unless a ``BEGIN`` follows.
    explicit: bool


@dataclass(slots=True)
class Rows:
    op: Literal["c", "u", "d"]
    schema: str
    table: str
    key: Sequence[str]
    #: ``(before, after)`` per row, values converted (:mod:`.values`).
    rows: Sequence[tuple[Row | None, Row | None]]
    ts_ms: int
    #: The table's look per this event's table map (:mod:`.shapes`): the same object for
    #: every rows event of one look.
    shape: TableShape | None = None


@dataclass(slots=True)
class Query:
    start: BinlogPos
    end: BinlogPos
    schema: str
    query: str
    ts_ms: int


@dataclass(slots=True)
class TxEnd:
    end: BinlogPos
    xid: int | None
    ts_ms: int


@dataclass(slots=True)
class Heartbeat:
    """The server has sent everything up to ``at`` (a heartbeat while idle)."""

    at: BinlogPos


Record = TxBegin | Rows | Query | TxEnd | Heartbeat

#: Told of every change of a captured table, in stream order, before filters and skips:
#: ``(database.table, row, transaction start)``; ``row`` is ``None`` for a statement on
#: the whole table (``TRUNCATE``, DDL).
Observer = Callable[[str, Row | None, BinlogPos], None]

_TRUNCATE = re.compile(r"^\s*TRUNCATE\s+(?:TABLE\s+)?(\S+)", re.IGNORECASE)
_DDL = re.compile(r"^\s*(?:ALTER|CREATE|DROP|RENAME|TRUNCATE)\s+(?:ONLINE\s+|IGNORE\s+|"
                  r"TEMPORARY\s+)*TABLE\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?(\S+)", re.IGNORECASE)
_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


def table_of(name: str, default_schema: str) -> tuple[str, str]:
    """```db`.`t``` / ``db.t`` / ``t`` -> ``(db, t)`` (``default_schema`` when unqualified)."""
    parts = [p.strip("`") for p in re.findall(r"`(?:[^`]|``)+`|[^.`]+", name.rstrip(";,("))]
    if len(parts) >= 2:
        return parts[0], parts[1]
    return default_schema, parts[0] if parts else name


def statement_table(query: str, default_schema: str) -> tuple[str, tuple[str, str] | None]:
    """``("truncate" | "ddl" | "other", (schema, table) | None)`` of one statement."""
    text = _COMMENT.sub(" ", query)
    m = _TRUNCATE.match(text)
    if m:
        return "truncate", table_of(m.group(1), default_schema)
    m = _DDL.match(text)
    if m:
        return "ddl", table_of(m.group(1), default_schema)
    return "other", None


class TableFilter:
    """Which tables are captured: ``db.table`` and ``db.*`` patterns minus exclusions."""

    def __init__(self, names: Sequence[str], exclude: Sequence[str],
                 rules: Mapping[str, ColumnRules | None] | None = None,
                 filters: Mapping[str, str | None] | None = None) -> None:
        self.patterns = list(names)
        self.exclude = set(exclude)
        self.rules = dict(rules or {})
        self.filters = {k: row_filter(v) for k, v in (filters or {}).items() if v}
        self._cache: dict[tuple[str, str], bool] = {}

    def captured(self, schema: str, table: str) -> bool:
        hit = self._cache.get((schema, table))
        if hit is None:
            name = f"{schema}.{table}"
            hit = name not in self.exclude and any(
                fnmatch.fnmatchcase(name, p) for p in self.patterns)
            self._cache[(schema, table)] = hit
        return hit

    def schemas(self) -> list[str]:
        return sorted({p.split(".", 1)[0] for p in self.patterns})

    def rules_for(self, schema: str, table: str) -> ColumnRules | None:
        name = f"{schema}.{table}"
        if name in self.rules:
            return self.rules[name]
        return self.rules.get(f"{schema}.*")

    def filter_for(self, schema: str, table: str) -> RowFilter | None:
        """The row filter of ``schema.table`` (its own entry, else its ``schema.*``)."""
        if not self.filters:
            return None
        name = f"{schema}.{table}"
        if name in self.rules:
            return self.filters.get(name)
        return self.filters.get(f"{schema}.*")


class EventBuilder:
    """Change events of one adapter (column rules, keys, source metadata)."""

    def __init__(self, adapter: str, tables: TableFilter, utc_datetimes: bool = False
                 ) -> None:
        self.adapter = adapter
        self.tables = tables
        #: ``DATETIME`` values are converted to UTC (``datetime_timezone`` is set).
        self.utc_datetimes = utc_datetimes
        #: The last look of each table seen (``(schema, table)``), for its truncates.
        self.shapes: dict[tuple[str, str], TableShape] = {}

    def shape(self, schema: str, table: str, facts: Sequence[ColumnFacts],
              key: Sequence[str]) -> TableShape:
        """A table's shape from its columns (a snapshot's ``information_schema`` reading,
        or a table map's): the table's last shape itself when the look is the same."""
        shape = table_shape(facts, key, self.tables.rules_for(schema, table),
                            self.utc_datetimes)
        last = self.shapes.get((schema, table))
        if last is not None and last.fingerprint() == shape.fingerprint():
            return last
        self.shapes[(schema, table)] = shape
        return shape

    def event(self, op: Op, schema: str, table: str, key_cols: Sequence[str],
              before: Row | None, after: Row | None, position: str, index: int,
              txid: str | int | None, ts_ms: int, extra: dict[str, Any],
              shape: TableShape | None = None) -> ChangeEvent:
        rules = self.tables.rules_for(schema, table)
        row = after if after is not None else before
        key: dict[str, Any] | None = None
        if key_cols and row is not None:
            key = {k: row.get(k) for k in key_cols}
            if rules is not None and rules.mask:
                key = {k: mask_value(v, rules.mask_salt) if k in rules.mask else v
                       for k, v in key.items()}
        return ChangeEvent(
            adapter=self.adapter, table=table, op=op, position=position, index=index,
            schema=schema, key=key, before=apply_rules(before, rules),
            after=apply_rules(after, rules), txid=txid, ts_ms=ts_ms, source_extra=extra,
            shape=shape)

    def snapshot_event(self, schema: str, table: str, key_cols: Sequence[str], row: Row,
                       prefix: str, row_key: Sequence[Any], ts_ms: int,
                       extra: dict[str, Any] | None = None,
                       shape: TableShape | None = None) -> ChangeEvent | None:
        """An ``r`` event; ``prefix`` names the snapshot (``snap:<gen>.<attempt>@<origin>``,
        see :meth:`~.position.SnapshotProgress.id_prefix`). ``None``: the table's row
        filter leaves the row out."""
        rf = self.tables.filter_for(schema, table)
        if rf is not None and not rf.matches(row, "r"):
            return None
        position = f"{prefix}:{schema}.{table}:{key_text(row_key)}"
        return self.event("r", schema, table, key_cols, None, row, position, 0, None, ts_ms,
                          extra or {"snapshot": True}, shape)


def key_text(values: Sequence[Any]) -> str:
    """A key as compact JSON text (ids, and key equality across ``SELECT`` and binlog)."""
    return orjson.dumps(list(values), default=str).decode()


@dataclass(slots=True)
class _Tx:
    start: BinlogPos
    gtid: str | None
    ts_ms: int
    explicit: bool
    skip: int
    #: Changes of captured tables seen so far (the next one's index).
    ordinal: int = 0
    xid: int | None = None


@dataclass(slots=True)
class TxAssembler:
    """Records in, events out, the position kept exact (see :mod:`.position`)."""

    builder: EventBuilder
    pos: Position
    _tx: _Tx | None = None
    #: Captured tables touched by DDL since the caller last cleared this.
    ddl_tables: list[tuple[str, str]] = field(default_factory=list)
    observer: Observer | None = None

    @property
    def in_transaction(self) -> bool:
        return self._tx is not None

    def feed(self, record: Record) -> list[ChangeEvent]:
        if isinstance(record, Rows):
            return self._rows(record)
        if isinstance(record, TxBegin):
            self._begin(record.start, record.gtid, record.ts_ms, record.explicit)
            return []
        if isinstance(record, TxEnd):
            if self._tx is not None:
                self._tx.xid = record.xid
            self._end(record.end)
            return []
        if isinstance(record, Heartbeat):
            return []
        return self._query(record)

    def _begin(self, start: BinlogPos, gtid: str | None, ts_ms: int, explicit: bool) -> None:
        p = self.pos
        skip = p.tx_done if p.tx_start is not None and p.tx_start == start else 0
        self._tx = _Tx(start, gtid, ts_ms, explicit, skip)

    def _end(self, end: BinlogPos) -> None:
        tx = self._tx
        p = self.pos
        p.at = end
        if tx is not None:
            p.gtid = tx.gtid or p.gtid
            p.retire_filters(tx.start)
        p.tx_start, p.tx_done = None, 0
        self._tx = None

    def _take(self, tx: _Tx) -> int | None:
        """The next ordinal of ``tx``, or ``None`` when it was committed before a restart."""
        index = tx.ordinal
        tx.ordinal += 1
        return None if index < tx.skip else index

    def _extra(self, tx: _Tx) -> dict[str, Any]:
        return {"file": tx.start.file, "pos": tx.start.pos, "gtid": tx.gtid,
                "snapshot": False}

    def _rows(self, rec: Rows) -> list[ChangeEvent]:
        if not self.builder.tables.captured(rec.schema, rec.table):
            return []
        tx = self._tx
        if tx is None:  # rows without a GTID/BEGIN seen: a start we cannot name better
            tx = self._tx = _Tx(self.pos.at, None, rec.ts_ms, True, 0)
        out: list[ChangeEvent] = []
        position = str(tx.start)
        txid: str | int | None = tx.gtid or tx.xid or position
        table = f"{rec.schema}.{rec.table}"
        filters = self.pos.filters
        observer = self.observer
        rf = self.builder.tables.filter_for(rec.schema, rec.table)
        shape = rec.shape
        if shape is not None:
            self.builder.shapes[(rec.schema, rec.table)] = shape
        for before, after in rec.rows:
            if observer is not None:
                observer(table, after if after is not None else before, tx.start)
            index = self._take(tx)
            if index is None:
                continue
            if filters:
                row = after if after is not None else before
                key = tuple(row.get(k) for k in rec.key) if row is not None and rec.key else None
                if already_copied(filters, table, key, tx.start):
                    continue
            op: Op = rec.op
            if rf is not None:  # the crossing rule: see cdc_bridge.adapters.filters.rowfilter
                routed = rf.route(op, before, after)
                if routed is None:
                    continue
                op = routed[0]  # type: ignore[assignment]
                before = None if routed[1] is None else before
                after = None if routed[2] is None else after
            out.append(self.builder.event(op, rec.schema, rec.table, rec.key, before,
                                          after, position, index, txid, tx.ts_ms,
                                          self._extra(tx), shape))
        return out

    def _query(self, rec: Query) -> list[ChangeEvent]:
        text = rec.query.strip().rstrip(";").strip().upper()
        if text == "BEGIN":
            if self._tx is None:
                self._begin(rec.start, None, rec.ts_ms, True)
            else:
                self._tx.explicit = True
            return []
        if text in ("COMMIT", "ROLLBACK"):
            self._end(rec.end)
            return []
        if self._tx is None:
            self._begin(rec.start, None, rec.ts_ms, False)
        tx = self._tx
        assert tx is not None
        out: list[ChangeEvent] = []
        kind, name = statement_table(rec.query, rec.schema)
        if name is not None and self.builder.tables.captured(*name):
            if self.observer is not None and kind in ("truncate", "ddl"):
                self.observer(f"{name[0]}.{name[1]}", None, tx.start)
            if kind == "truncate":
                index = self._take(tx)
                if index is not None and not already_copied(
                        self.pos.filters, f"{name[0]}.{name[1]}", None, tx.start):
                    out.append(self.builder.event("t", name[0], name[1], (), None, None,
                                                  str(tx.start), index, tx.gtid or str(tx.start),
                                                  rec.ts_ms, self._extra(tx),
                                                  self.builder.shapes.get(name)))
            elif kind == "ddl":
                self.ddl_tables.append(name)
                self.builder.shapes.pop(name, None)  # its look is known again at its next rows
        if not tx.explicit:
            self._end(rec.end)
        return out

    def checkpoint(self) -> dict[str, Any]:
        """What the outbox stores with the events handed out so far."""
        p = self.pos
        tx = self._tx
        if tx is None or tx.ordinal == 0:
            return p.to_checkpoint()
        saved = p.tx_start, p.tx_done
        p.tx_start, p.tx_done = tx.start, max(tx.ordinal, tx.skip)
        try:
            return p.to_checkpoint()
        finally:
            p.tx_start, p.tx_done = saved
