"""On-demand re-snapshot of live tables (``cdc-bridge snapshot``), interleaved with the stream.

The method: a chunk is *placed* in the stream at the exact binlog position it was read
at, so no stream event is dropped or moved (DBLog's watermark method, with the server's
own snapshot position as the single watermark).

1. Between two transactions of the stream, at binlog position ``P`` (everything before
   ``P`` emitted, nothing after), a chunk of ``snapshot_chunk_size`` rows of the current
   table is read in primary-key order (keyset, ``WHERE (pk) > (last released)``) in a
   short transaction ``START TRANSACTION WITH CONSISTENT SNAPSHOT``. MariaDB reports the
   binlog position ``H`` that snapshot matches exactly (``binlog_snapshot_file`` /
   ``binlog_snapshot_position``: every transaction ending at or before ``H`` is visible,
   none after; MySQL: ``FLUSH TABLES WITH READ LOCK`` held just while the transaction
   opens and ``SHOW MASTER STATUS`` is read). If ``H < P`` (a commit already streamed is
   not yet visible to new snapshots) the snapshot is taken again.
2. The rows are *held* (one chunk in memory) while the stream goes on; changes of the
   held table between ``P`` and ``H`` are emitted as usual: they are older than the rows.
3. At the first transaction boundary at or past ``H`` (in practice exactly ``H``, which
   is a commit boundary of the log; when the database is idle, ``H = P`` and the chunk
   is released at once) the rows are released as ``op: r`` events into the batch being
   built, with the progress in that batch's checkpoint. A heartbeat of the server at or
   past ``H`` also releases it (after a log rotation ``H`` may lie in the next file,
   before any transaction there).
4. Should a change of a held key come from a transaction starting at or after ``H``
   (only possible in the case of 3's heartbeat or rotation), it was emitted before the
   release and is newer than the row read: that key's ``r`` is dropped (the change
   carries the full row). ``TRUNCATE`` or DDL of the held table there: the chunk is
   dropped and read again (with the table's columns read again).

A partial backfill (``cdc-bridge snapshot ... --where``) adds its ``where`` (kept in the
progress per table) to the chunk query: a chunk is the next matching rows in key order,
and the table's own ``filter`` still judges each row (:meth:`.changes.EventBuilder.
snapshot_event`). Its total counts the matching rows (up to :data:`COUNT_UP_TO` rows in
the table; the table's estimate beyond).

Per key, then: every change is emitted exactly as without the re-snapshot, and the
key's ``r`` sits at a point of that sequence where it equals the key's state; folding
the stream (``r``/``c``/``u`` set a key, ``d`` removes it) never regresses and ends
equal to the table. Capture of every table goes on during a re-snapshot; the stream
pauses only while one chunk is read (one indexed query).

Progress (:class:`~.position.ResnapProgress`: tables, last key released, rows, seq) is
in the checkpoint committed with each chunk's ``r`` events, so after ``kill -9`` the run
resumes after the last committed chunk (a held chunk is read again). Event ids are
``snap:<gen>.<attempt>@<origin>:<db>.<table>:<key>``, ``origin`` the stream position when
the run was requested and ``attempt`` bumped on each resume, so no id of another
snapshot, or of an earlier attempt, is repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.adapters.filters.sql import to_mysql_sql
from cdc_bridge.adapters.mysql_binlog import setup
from cdc_bridge.adapters.mysql_binlog.changes import EventBuilder, Row, key_text
from cdc_bridge.adapters.mysql_binlog.config import MysqlBinlogConfig
from cdc_bridge.adapters.mysql_binlog.position import BinlogPos, Position, ResnapProgress
from cdc_bridge.adapters.mysql_binlog.snapshot import (
    Condition,
    commit,
    count_matching,
    open_snapshot,
    read_chunk,
)
from cdc_bridge.adapters.mysql_binlog.values import RowConverter
from cdc_bridge.adapters.snapshot_where import check_where
from cdc_bridge.kernel.errors import SourceUnavailable
from cdc_bridge.kernel.events import ChangeEvent

log = logging.getLogger("cdc_bridge.adapter.mysql_binlog")

#: How long a chunk snapshot may stay behind the stream before we give up (retryable).
BEHIND_TIMEOUT_S = 10.0
#: A partial backfill counts its matching rows for its total when the table holds about
#: this many rows or fewer; a larger table's estimate stands in (an upper bound).
COUNT_UP_TO = 1_000_000


def where_condition(where: str | None) -> Condition | None:
    """A partial backfill's ``where`` as a MySQL condition (``None``: every row)."""
    return None if where is None else to_mysql_sql(check_where(where).expr)


@dataclass(slots=True)
class HeldChunk:
    """Rows of ``table`` read under a snapshot matching binlog position ``at``. Pure."""

    table: str
    at: BinlogPos
    key_cols: Sequence[str]
    #: key text -> row (converted, in key order).
    rows: dict[str, Row]
    #: Last key of the chunk as ``SELECT`` returned it (``None``: the chunk is empty).
    last: list[Any] | None
    #: Fewer rows than asked: the table ends with this chunk.
    exhausted: bool
    stale: set[str] = field(default_factory=set)
    #: Read the chunk again (``TRUNCATE`` or DDL of the table after ``at``).
    redo: bool = False

    def observe(self, row: Row | None, tx_start: BinlogPos) -> None:
        """A change of this table; only those of transactions starting at or after
        ``at`` are newer than the rows held."""
        if tx_start.before(self.at):
            return
        if row is None:
            self.redo = True
            return
        k = key_text([row.get(c) for c in self.key_cols])
        if k in self.rows:
            self.stale.add(k)

    def passed(self, at: BinlogPos) -> bool:
        return not at.before(self.at)


def release(chunk: HeldChunk, progress: ResnapProgress) -> tuple[list[Row], bool]:
    """Apply a released chunk to ``progress``: the rows to emit as ``r``, and whether the
    table is done. A chunk to redo emits nothing and leaves ``progress`` as it was."""
    if chunk.redo:
        return [], False
    emit = [row for k, row in chunk.rows.items() if k not in chunk.stale]
    if chunk.last is not None:
        progress.after = list(chunk.last)
    progress.rows += len(emit)
    return emit, chunk.exhausted


def resolve(requested: Sequence[str] | None, meta: dict[str, setup.TableMeta]
            ) -> tuple[list[str], list[str]]:
    """Requested names (``db.table``, or ``table`` when one captured table has that name;
    all captured tables when none) -> ``(tables, problems)``."""
    if not requested:
        return [t for t, m in sorted(meta.items()) if m.key], []
    names: list[str] = []
    problems: list[str] = []
    for name in requested:
        hits = [name] if name in meta else [t for t in meta if t.split(".", 1)[1] == name]
        if len(hits) != 1:
            why = "is ambiguous" if hits else "is not captured"
            problems.append(f"table {name!r} {why} (captured: "
                            f"{', '.join(sorted(meta)) or 'none'})")
        elif not meta[hits[0]].key:
            problems.append(f"table {hits[0]} has no primary key: a live re-snapshot reads "
                            "and places rows by primary key")
        elif hits[0] not in names:
            names.append(hits[0])
    return names, problems


class Resnapshotter:
    """Reads chunks and releases them into the stream (driven by the adapter's loop)."""

    def __init__(self, config: MysqlBinlogConfig, builder: EventBuilder,
                 meta: dict[str, setup.TableMeta], pos: Position,
                 run: Callable[..., Any]) -> None:
        self.config = config
        self.name = config.name
        self.builder = builder
        self.meta = meta
        self.pos = pos
        self._run = run
        self.held: HeldChunk | None = None
        self._conn: setup.Conn | None = None
        self._fresh: set[str] = set()
        zone = config.datetime_timezone
        self._tz = None if zone is None else zoneinfo.ZoneInfo(zone)
        self._logged_at = 0.0

    @property
    def progress(self) -> ResnapProgress | None:
        p = self.pos.resnapshot
        return p if p is not None and not p.finished else None

    def wants_chunk(self) -> bool:
        return self.held is None and self.progress is not None

    def observe(self, table: str, row: Row | None, tx_start: BinlogPos) -> None:
        """:data:`~.changes.Observer` of the stream's assembler."""
        held = self.held
        if held is not None and held.table == table:
            held.observe(row, tx_start)
        if row is None:
            self._fresh.discard(table)  # DDL: read its columns again

    # ---------------------------------------------------------------- reading

    async def read_chunk(self, stream_at: BinlogPos) -> None:
        """Read the next chunk; the stream stands between transactions at ``stream_at``."""
        progress = self.progress
        while progress is not None:
            name = progress.current
            if name is None or name not in progress.remaining():
                name = progress.remaining()[0]
                progress.current, progress.after = name, None
            meta = await self._table(name)
            if meta is not None and meta.key and meta.columns:
                break
            log.warning("%s: re-snapshot gen %d: skipping %s (%s)", self.name, progress.gen,
                        name, "no longer there" if meta is None or not meta.columns
                        else "no primary key")
            progress.table_done(name)
            progress = self.progress
        if progress is None or meta is None or name is None:
            return
        only = where_condition(progress.wheres.get(name))
        if progress.after is None:  # first chunk of the table: its (estimated) size
            size = meta.estimated_rows
            if only is not None and size <= COUNT_UP_TO:
                size = await self._run(self._count, meta, only)
            progress.total = max(progress.total, progress.rows + size)
        at, raw = await self._run(self._read, meta, progress.after, stream_at, only)
        conv = RowConverter(meta.columns, self._tz)
        idx = [next(i for i, c in enumerate(meta.columns) if c.name == k) for k in meta.key]
        rows: dict[str, Row] = {}
        for r in raw:
            row = conv.from_select(r)
            rows[key_text([row[k] for k in meta.key])] = row
        last = [raw[-1][i] for i in idx] if raw else None
        self.held = HeldChunk(name, at, list(meta.key), rows, last,
                              len(raw) < self.config.snapshot_chunk_size)

    async def _table(self, name: str) -> setup.TableMeta | None:
        if name not in self._fresh:  # columns as of now (they may have changed since)
            schema, table = name.split(".", 1)
            self.meta[name] = await self._run(self._meta, schema, table)
            self._fresh.add(name)
        return self.meta.get(name)

    def _connection(self) -> setup.Conn:
        if self._conn is None:
            self._conn = setup.connect(self.config)
        return self._conn

    def _meta(self, schema: str, table: str) -> setup.TableMeta:
        """Blocking: the table's columns and key now (no columns: it is gone)."""
        conn = self._connection()
        with conn.cursor() as cur:
            cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES WHERE "
                        "TABLE_SCHEMA = %s AND TABLE_NAME = %s", (schema, table))
            found = cur.fetchone()
        if found is None:
            return setup.TableMeta(schema, table, [], [])
        meta = setup.table_meta(conn, schema, table)
        meta.estimated_rows = int(found[0] or 0)
        return meta

    def _count(self, meta: setup.TableMeta, only: Condition) -> int:
        """Blocking: the rows of ``meta`` a partial backfill reads."""
        try:
            return count_matching(self._connection(), meta, only)
        except BaseException:
            self._drop()
            raise

    def _read(self, meta: setup.TableMeta, after: list[Any] | None, stream_at: BinlogPos,
              only: Condition | None = None) -> tuple[BinlogPos, list[tuple[Any, ...]]]:
        """Blocking: a snapshot no older than ``stream_at``, and the chunk read in it."""
        conn = self._connection()
        deadline = time.monotonic() + BEHIND_TIMEOUT_S
        try:
            while True:
                at = open_snapshot(conn)
                if not at.before(stream_at):
                    break
                commit(conn)
                if time.monotonic() > deadline:
                    raise SourceUnavailable(
                        f"{self.name}: re-snapshot: the server's snapshot stays at {at}, "
                        f"behind the stream at {stream_at}, for {BEHIND_TIMEOUT_S:.0f}s")
                time.sleep(0.01)
            rows = read_chunk(conn, meta, after, self.config.snapshot_chunk_size, only)
            commit(conn)
            return at, rows
        except BaseException:
            self._drop()
            raise

    # ---------------------------------------------------------------- releasing

    def release_at(self, at: BinlogPos) -> list[ChangeEvent] | None:
        """The stream stands between transactions, everything up to ``at`` emitted: the
        held chunk's ``r`` events if it is passed (``None``: nothing to release)."""
        chunk = self.held
        progress = self.pos.resnapshot
        if chunk is None or progress is None or not chunk.passed(at):
            return None
        self.held = None
        if chunk.redo:
            self._fresh.discard(chunk.table)
        rows, table_done = release(chunk, progress)
        meta = self.meta[chunk.table]
        now_ms = int(time.time() * 1000)
        prefix = progress.id_prefix()
        extra = {"snapshot": True, "resnapshot": progress.seq}
        shape = self.builder.shape(meta.schema, meta.table, meta.facts, meta.key)
        events = [ev for row in rows
                  if (ev := self.builder.snapshot_event(
                      meta.schema, meta.table, meta.key, row, prefix,
                      [row[k] for k in meta.key], now_ms, extra, shape)) is not None]
        if table_done:
            progress.table_done(chunk.table)
            log.info("%s: re-snapshot gen %d: %s done (%d rows so far)", self.name,
                     progress.gen, chunk.table, progress.rows)
            if progress.finished:
                log.info("%s: re-snapshot gen %d done: %d rows", self.name, progress.gen,
                         progress.rows)
        elif time.monotonic() - self._logged_at >= 5.0:
            self._logged_at = time.monotonic()
            log.info("%s: re-snapshot gen %d: %d/%d rows", self.name, progress.gen,
                     progress.rows, max(progress.total, progress.rows))
        return events

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._drop)
