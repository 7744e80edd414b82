"""On-demand re-snapshot while streaming: reads chunks, releases them into the stream.

:class:`Resnapshotter` is driven by :class:`cdc_bridge.adapters.postgres.stream.StreamReader`:

* between two transactions, when no chunk is held, :meth:`Resnapshotter.read_chunk`
  reads the next chunk of the current table (plus the keys left stale by the previous
  one) under a fresh REPEATABLE READ snapshot on its own connection, checks that the
  snapshot sees every transaction the stream already emitted (else takes it again),
  and writes a tiny logical message so the stream reaches the chunk's ``until`` even
  when the database is otherwise idle;
* every change of the table while the chunk is held goes to :meth:`observe`;
* at each point where the stream knows its WAL position (:meth:`at`), a chunk whose
  ``until`` is passed is released: its rows become ``op: r`` events appended to the
  batch being built, and the progress in the checkpoint moves past them.

The rules and the exact guarantee are in :mod:`cdc_bridge.adapters.postgres.resnap_state`. The
stream is paused only while one chunk is read (one indexed keyset query of
``snapshot_chunk_size`` rows), so capture of every table goes on during a re-snapshot.

A partial backfill (``cdc-bridge snapshot ... --where``) adds its ``where`` (kept in
the progress, :func:`where_sql`) to the chunk queries, AND the table's own filter where
it applies here; its total is the planner's estimate of the matching rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from typing import Any

import orjson
import psycopg
from psycopg import sql

from cdc_bridge.adapters.filters.sql import to_postgres_sql
from cdc_bridge.adapters.postgres.changes import EventBuilder, RelationState
from cdc_bridge.adapters.postgres.config import HEARTBEAT_PREFIX
from cdc_bridge.adapters.postgres.pgoutput import UNCHANGED_TOAST, str_to_lsn
from cdc_bridge.adapters.postgres.position import Position
from cdc_bridge.adapters.postgres.resnap_state import (
    RECENT_XIDS,
    KeyTexts,
    PendingChunk,
    ResnapProgress,
    Visibility,
    release,
)
from cdc_bridge.adapters.postgres.setup import TableInfo, table_columns
from cdc_bridge.adapters.snapshot_where import check_where
from cdc_bridge.kernel.errors import DecodeError, SourceUnavailable
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter

log = logging.getLogger("cdc_bridge.adapter.postgres")

SqlConn = psycopg.AsyncConnection[tuple[Any, ...]]
#: How long a chunk snapshot may stay behind the stream before we give up (retryable).
BEHIND_TIMEOUT_S = 10.0


class Resnapshotter:
    def __init__(self, name: str, dsn: str, connect_timeout_s: float, builder: EventBuilder,
                 tables: dict[str, TableInfo], pos: Position, chunk_size: int) -> None:
        self.name = name
        self.dsn = dsn
        self.connect_timeout_s = connect_timeout_s
        self.builder = builder
        self.tables = tables
        self.pos = pos
        self.chunk_size = chunk_size
        self.pending: PendingChunk | None = None
        #: xids of the last transactions the stream emitted (see ``Visibility.behind``).
        self.recent: deque[int] = deque(maxlen=RECENT_XIDS)
        self._conn: SqlConn | None = None
        self._nudge = True
        self._rels: dict[str, RelationState] = {}
        #: Tables whose columns changed since the start: their look as last read.
        self._looks: dict[str, TableInfo] = {}
        self._logged_at = 0.0

    # ---------------------------------------------------------------- state

    @property
    def progress(self) -> ResnapProgress | None:
        p = self.pos.resnapshot
        return p if p is not None and not p.finished else None

    def wants_chunk(self) -> bool:
        return self.pending is None and self.progress is not None

    def holds(self, table: str) -> bool:
        return self.pending is not None and self.pending.table == table

    def committed(self, xid: int) -> None:
        self.recent.append(xid)

    # ---------------------------------------------------------------- stream hooks

    def observe(self, rel: RelationState, xid: int, tuples: list[Any]) -> None:
        """A change of a held table: ``tuples`` are its new/old/key tuple values."""
        assert self.pending is not None
        info = self.tables.get(rel.qualified)
        keys = [_key_of(rel, info, values) for values in tuples if values is not None]
        self.pending.observe(xid, keys or [None])

    def observe_truncate(self, xid: int) -> None:
        assert self.pending is not None
        self.pending.observe_truncate(xid)

    def at(self, lsn: int) -> tuple[list[ChangeEvent], list[DeadLetter]] | None:
        """The stream is at ``lsn`` between transactions: release a passed chunk."""
        chunk = self.pending
        progress = self.pos.resnapshot
        if chunk is None or progress is None or not chunk.passed(lsn):
            return None
        self.pending = None
        rel = self._rel(chunk.table)
        out = release(chunk, progress)
        events: list[ChangeEvent] = []
        dead: list[DeadLetter] = []
        now_ms = int(time.time() * 1000)
        prefix = f"snap:{progress.gen}.{progress.attempt}:{chunk.table}:"
        extra = {"snapshot": True, "resnapshot": progress.seq}
        for key, row in out.rows:
            position = prefix + orjson.dumps(list(key)).decode()
            try:
                event = self.builder.snapshot_event(rel, row, position, now_ms, extra)
                if event is not None:
                    events.append(event)
            except (DecodeError, ValueError) as e:
                dead.append(DeadLetter(self.name, position, f"{chunk.table}: {e}",
                                       orjson.dumps({"table": chunk.table, "values": row}),
                                       context={"table": chunk.table}))
        if out.table_finished:
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
        return events, dead

    # ---------------------------------------------------------------- reading

    async def read_chunk(self) -> None:
        progress = self.progress
        info: TableInfo | None = None
        while progress is not None:
            name = progress.current
            if name is None or name not in progress.remaining():
                name = progress.remaining()[0]
                progress.current, progress.after, progress.retry = name, None, []
            info = self.tables.get(name)
            if info is not None and info.primary_key:
                break
            log.warning("%s: re-snapshot gen %d: skipping %s (%s)", self.name, progress.gen,
                        name, "no longer captured" if info is None else "no primary key")
            progress.table_done(name)
            progress = self.progress
        if progress is None or info is None:
            return
        try:
            self.pending = await self._read(info, progress)
        except psycopg.OperationalError as e:
            await self._drop()
            raise SourceUnavailable(f"{self.name}: re-snapshot of {info.qualified} failed: "
                                    f"{_first_line(e)}") from None
        except (psycopg.ProgrammingError, psycopg.DataError) as e:
            where = progress.wheres.get(info.qualified)
            if where is None:
                raise
            await self._drop()  # the table changed since the request: its where fails now
            log.warning("%s: re-snapshot gen %d: skipping the rest of %s: --where %s fails: "
                        "%s", self.name, progress.gen, info.qualified, where, _first_line(e))
            progress.table_done(info.qualified)
            return
        await self._nudge_stream()

    async def _read(self, info: TableInfo, progress: ResnapProgress) -> PendingChunk:
        conn = await self._connection()
        deadline = time.monotonic() + BEHIND_TIMEOUT_S
        while True:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            cur = await conn.execute("SELECT pg_current_snapshot()::text, "
                                     "pg_current_wal_lsn()::text")
            row = await cur.fetchone()
            assert row is not None
            vis = Visibility.parse(str(row[0]))
            behind = vis.behind(list(self.recent))
            if not behind:
                break
            await conn.execute("ROLLBACK")
            if time.monotonic() > deadline:
                raise SourceUnavailable(f"{self.name}: re-snapshot: transactions {behind[:5]} "
                                        f"are streamed but still not visible after "
                                        f"{BEHIND_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.01)
        info = await self._columns_now(conn, info)
        rows: dict[KeyTexts, list[str | None]] = {}
        order = [next(i for i, c in enumerate(info.columns) if c.name == k)
                 for k in info.primary_key]
        partial = where_sql(progress.wheres.get(info.qualified))
        only = [] if partial is None else [partial]
        if progress.retry:
            for r in await _select(conn, info, [_in_keys(info, len(progress.retry)), *only],
                                   [v for k in progress.retry for v in k], None):
                rows[_key(r, order)] = r
        after = progress.after
        conds = list(only)
        if after is not None:
            conds.insert(0, sql.SQL("({}) > ({})").format(
                _pk(info), sql.SQL(", ").join(sql.Placeholder() * len(after))))
        keyset = await _select(conn, info, conds, list(after or []), self.chunk_size)
        for r in keyset:
            rows[_key(r, order)] = r
        if after is None and not progress.retry:  # first chunk of the table: its size
            size = await _table_size(conn, info, partial)
            progress.total = max(progress.total, progress.rows + size)
        await conn.execute("COMMIT")
        last = _key(keyset[-1], order) if keyset else (
            tuple(after) if after is not None else None)
        return PendingChunk(info.qualified, vis, str_to_lsn(str(row[1])), rows, last,
                            len(keyset) < self.chunk_size)

    async def _nudge_stream(self) -> None:
        """A logical message past ``until``: an idle stream reaches it at once."""
        if not self._nudge or self._conn is None:
            return
        try:
            await self._conn.execute("SELECT pg_logical_emit_message(false, %s, 'resnapshot')",
                                     (HEARTBEAT_PREFIX,))
        except psycopg.Error as e:
            self._nudge = False
            log.warning("%s: re-snapshot cannot write logical messages (%s); chunks are "
                        "released at the next keepalive or heartbeat instead", self.name,
                        _first_line(e))

    async def _connection(self) -> SqlConn:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s)),
                application_name="cdc-bridge-resnapshot")
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def close(self) -> None:
        await self._drop()

    def forget(self, table: str) -> None:
        """``table`` was re-created: read its shape again before its next chunk."""
        self._rels.pop(table, None)
        self._looks.pop(table, None)

    def _info(self, table: str) -> TableInfo:
        """The table as the last chunk read it (its columns may have changed since the
        start: a chunk reads them in its own snapshot, see :meth:`_columns_now`)."""
        return self._looks.get(table) or self.tables[table]

    async def _columns_now(self, conn: SqlConn, info: TableInfo) -> TableInfo:
        """``info`` with the columns the chunk's snapshot sees (an ALTER TABLE since the
        start): the chunk reads them, and its ``r`` events carry that look."""
        current = self._info(info.qualified)
        columns = await table_columns(conn, info.oid)
        names = {c.name for c in columns}
        if columns == current.columns or not all(k in names for k in info.primary_key):
            return current
        current = self._looks[info.qualified] = dataclasses.replace(current, columns=columns)
        self._rels.pop(info.qualified, None)
        return current

    def _rel(self, table: str) -> RelationState:
        rel = self._rels.get(table)
        if rel is None:
            # The copy reads whole key ranges (its merge with the stream needs them), so
            # the table's row filter is judged on each decoded row, never in its query.
            info = self._info(table)
            rel = self.builder.table_state(info)
            rel.filter = info.row_filter
            self._rels[table] = rel
        return rel


def _key_of(rel: RelationState, info: TableInfo | None, values: Any) -> KeyTexts | None:
    """Primary key (text form, catalogue order) of a streamed tuple, if complete."""
    if info is None or not info.primary_key:
        return None
    out: list[str] = []
    for k in info.primary_key:
        try:
            v = values[rel.names.index(k)]
        except (ValueError, IndexError):
            return None
        if v is None or v is UNCHANGED_TOAST:
            return None
        out.append(v if isinstance(v, str) else bytes(v).decode())
    return tuple(out)


def _key(row: list[str | None], order: list[int]) -> KeyTexts:
    return tuple(str(row[i]) for i in order)


def _pk(info: TableInfo) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)


def _in_keys(info: TableInfo, n: int) -> sql.Composable:
    one = sql.SQL("({})").format(sql.SQL(", ").join(sql.Placeholder() * len(info.primary_key)))
    return sql.SQL("({}) IN ({})").format(_pk(info), sql.SQL(", ").join([one] * n))


def where_sql(where: str | None) -> sql.Composable | None:
    """A partial backfill's ``where`` as a PostgreSQL condition (``None``: every row)."""
    if where is None:
        return None
    return sql.SQL("({})").format(sql.SQL(to_postgres_sql(check_where(where).expr)))


async def _table_size(conn: SqlConn, info: TableInfo, partial: sql.Composable | None) -> int:
    """Rows to read: the table's estimate (counted when it has none); with a ``where``,
    the planner's estimate of the matching rows (counted on a table never analysed)."""
    if partial is None:
        if info.estimated_rows <= 0:
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(info.ident()))
            counted = await cur.fetchone()
            info.estimated_rows = int(counted[0]) if counted else 0
        return info.estimated_rows
    if info.estimated_rows <= 0:
        cur = await conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
            info.ident(), partial))
        counted = await cur.fetchone()
        return int(counted[0]) if counted else 0
    cur = await conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} WHERE {}").format(
        info.ident(), partial))
    plan = await cur.fetchone()
    try:
        raw = plan[0] if plan else None
        doc = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
        return int(doc[0]["Plan"]["Plan Rows"])  # type: ignore[index]
    except (TypeError, KeyError, IndexError, ValueError):
        return info.estimated_rows


async def _select(conn: SqlConn, info: TableInfo, conds: list[sql.Composable],
                  params: list[Any], limit: int | None) -> list[list[str | None]]:
    """Rows as column texts (the same form the stream decodes), in key order."""
    cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in info.columns)
    where: sql.Composable = sql.SQL("")
    if conds:
        where = sql.SQL(" WHERE {}").format(sql.SQL(" AND ").join(conds))
    query = sql.SQL("SELECT {} FROM {}{} ORDER BY {}").format(cols, info.ident(), where,
                                                              _pk(info))
    if limit is not None:
        query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(limit))
    cur = await conn.execute(query, params)
    res = cur.pgresult
    assert res is not None
    width = len(info.columns)
    return [[None if (v := res.get_value(r, c)) is None else bytes(v).decode()
             for c in range(width)] for r in range(res.ntuples)]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
