"""The snapshot half of the adapter: existing rows as ``op: r`` events, chunk by chunk.

Consistency with the stream. On a first run the slot is created with an exported
snapshot; a second connection imports it (``SET TRANSACTION SNAPSHOT`` in a REPEATABLE
READ READ ONLY transaction) before the replication connection is released, so the copy
shows exactly the transactions committed before the slot's consistent point and the
stream, which starts there, exactly the others: no change missed, none doubled. All
``r`` events are emitted before streaming starts, so per key a snapshot row always
precedes the changes made after it.

Chunks: keyset pagination on the primary key (``WHERE (pk) > (last) ORDER BY pk LIMIT
n``; ``ctid`` for tables without a key) in that one transaction. Each chunk is one
outbox batch whose checkpoint records the last key copied, so a crash loses at most the
chunk in flight. A resumed snapshot reads the rest under a fresh snapshot with a
visibility filter on the stream (see :mod:`cdc_bridge.adapters.postgres.position` for the exact
guarantee). Values are read in text form (``PGresult`` values, no Python loaders) and
converted by the same code as streamed values, so ``r`` and ``c`` rows look alike.

Outbox tables (``outbox_tables``) are copied the same way, but their rows become routed
messages, not ``r`` events, and only rows not marked published (``published_at IS
NULL``, when the table has that column): events written before the slot existed are
relayed, not lost. The id of such a message is the row's id, as when it is streamed, so
where a resumed copy and the stream both carry a row, JetStream's duplicate window
drops the copy (an outbox row is never dropped by the visibility filter: a row deleted
by the transaction that inserted it exists only in the stream).

Progress is logged every few seconds: rows done / estimated total and rate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import psycopg
from psycopg import sql

from cdc_bridge.adapters.contract import ChangeBatch
from cdc_bridge.adapters.postgres.changes import EventBuilder, RelationState
from cdc_bridge.adapters.postgres.outbox import OutboxRowError
from cdc_bridge.adapters.postgres.position import Position, SnapshotFilter
from cdc_bridge.adapters.postgres.setup import TableInfo
from cdc_bridge.adapters.snapshot_progress import SnapshotProgress
from cdc_bridge.kernel.errors import DecodeError, SourceUnavailable
from cdc_bridge.kernel.events import DeadLetter

log = logging.getLogger("cdc_bridge.adapter.postgres")

SqlConn = psycopg.AsyncConnection[tuple[Any, ...]]


async def import_snapshot(conn: SqlConn, snapshot_name: str) -> None:
    """Start the copy transaction on the slot's exported snapshot."""
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    await conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
        sql.Literal(snapshot_name)))


async def fresh_snapshot(conn: SqlConn, pos: Position,
                         tables: dict[str, TableInfo], builder: EventBuilder) -> None:
    """Resume (or start against an existing slot) under a new snapshot plus a filter."""
    progress = pos.snapshot
    assert progress is not None
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    cur = await conn.execute("SELECT pg_current_snapshot()::text")
    row = await cur.fetchone()
    cur = await conn.execute("SELECT pg_current_wal_lsn()::text")
    lsn_row = await cur.fetchone()
    assert row is not None and lsn_row is not None
    new = SnapshotFilter.from_snapshot(str(row[0]), str(lsn_row[0]))
    current = progress.current
    for name in progress.remaining():
        new.ranges[name] = None
    if current is not None and current in tables:
        rel = builder.table_state(tables[current])
        if progress.after is not None and rel.key_orderable():
            new.ranges[current] = progress.after
        else:
            progress.after = None  # copy the table again from its start
    whole = {t for t, bound in new.ranges.items() if bound is None}
    for old in pos.filters:
        for t in whole:
            old.ranges.pop(t, None)
    pos.filters = [f for f in pos.filters if f.ranges]
    pos.filters.append(new)
    progress.attempt += 1
    log.info("snapshot resumes under a fresh snapshot (attempt %d): %d table(s) left, "
             "stream changes already visible to it are filtered until %s",
             progress.attempt, len(progress.remaining()), lsn_row[0])


class SnapshotReader:
    def __init__(self, conn: SqlConn, builder: EventBuilder, tables: dict[str, TableInfo],
                 pos: Position, chunk_size: int,
                 outbox: dict[str, TableInfo] | None = None) -> None:
        self.conn = conn
        self.builder = builder
        #: Captured tables and outbox tables alike (the builder tells them apart).
        self.tables = {**tables, **(outbox or {})}
        self.pos = pos
        self.chunk_size = chunk_size

    async def batches(self) -> AsyncIterator[ChangeBatch]:
        progress = self.pos.snapshot
        assert progress is not None
        for t in progress.remaining():
            info = self.tables.get(t)
            if info is not None and info.estimated_rows <= 0:  # never analyzed: count
                cur = await self.conn.execute(
                    sql.SQL("SELECT count(*) FROM {}").format(info.ident()))
                row = await cur.fetchone()
                info.estimated_rows = int(row[0]) if row else 0
        total = sum(self.tables[t].estimated_rows for t in progress.remaining()
                    if t in self.tables)
        log.info("snapshot gen %d: %d table(s), about %d rows", progress.gen,
                 len(progress.remaining()), total)
        for name in progress.remaining():
            info = self.tables.get(name)
            if info is None:  # no longer configured
                progress.done.append(name)
                continue
            if progress.current != name:
                progress.current, progress.after = name, None
            async for batch in self._table(info, progress):
                yield batch
            progress.done.append(name)
            progress.current, progress.after = None, None
        try:
            await self.conn.execute("COMMIT")
        except psycopg.Error as e:
            raise SourceUnavailable(f"snapshot commit failed: {e}") from None
        self.pos.snapshot = None
        log.info("snapshot gen %d done: %d rows", progress.gen, progress.rows)
        yield ChangeBatch([], self.pos.to_checkpoint())

    async def _table(self, info: TableInfo, progress: SnapshotProgress
                     ) -> AsyncIterator[ChangeBatch]:
        rel = self.builder.table_state(info)
        by_ctid = not info.primary_key
        started = time.monotonic()
        logged = started
        done = 0
        while True:
            texts, ctids = await self._chunk(info, rel, progress.after, by_ctid)
            if not texts:
                break
            batch = ChangeBatch()
            now_ms = int(time.time() * 1000)
            origin = f"@{progress.origin}" if progress.origin else ""
            prefix = f"snap:{progress.gen}.{progress.attempt}{origin}:{info.qualified}:"
            for i, row in enumerate(texts):
                key = [ctids[i]] if by_ctid else [row[j] for j in rel.key_idx]
                self._add(batch, rel, row, prefix + orjson.dumps(key).decode(), now_ms)
            last = texts[-1]
            progress.after = [ctids[-1]] if by_ctid else [last[j] for j in rel.key_idx]
            progress.rows += len(texts)
            done += len(texts)
            batch.checkpoint = self.pos.to_checkpoint()
            yield batch
            now = time.monotonic()
            if now - logged >= 5.0:
                logged = now
                _progress(info, done, now - started)
            if len(texts) < self.chunk_size:
                break
        _progress(info, done, time.monotonic() - started, final=True)

    def _add(self, batch: ChangeBatch, rel: RelationState, row: list[str | None],
             position: str, now_ms: int) -> None:
        """One copied row -> an ``r`` event, or an outbox table's message, or a dead letter."""
        try:
            if rel.outbox:
                batch.messages.append(self.builder.outbox_message(rel, row))
            else:
                event = self.builder.snapshot_event(rel, row, position, now_ms,
                                                    {"snapshot": True})
                if event is not None:
                    batch.events.append(event)
        except (DecodeError, OutboxRowError, ValueError) as e:
            batch.dead_letters.append(DeadLetter(
                self.builder.adapter, position, f"{rel.qualified}: {e}",
                orjson.dumps({"table": rel.qualified, "values": list(row)}),
                context={"table": rel.qualified}))

    async def _chunk(self, info: TableInfo, rel: RelationState, after: list[str | None] | None,
                     by_ctid: bool) -> tuple[list[list[str | None]], list[str]]:
        cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in info.columns)
        if by_ctid:
            order: sql.Composable = sql.SQL("ctid")
            cols = sql.SQL("{}, ctid::text").format(cols)
        else:
            order = sql.SQL(", ").join(sql.Identifier(k) for k in info.primary_key)
        conds: list[sql.Composable] = []
        params: list[Any] = []
        if after is not None:
            if by_ctid:
                conds.append(sql.SQL("ctid > {}::tid").format(sql.Placeholder()))
            else:
                conds.append(sql.SQL("({}) > ({})").format(
                    order, sql.SQL(", ").join(sql.Placeholder() * len(after))))
            params = list(after)
        if rel.outbox and "published_at" in rel.names:
            conds.append(sql.SQL("published_at IS NULL"))
        where_filter = info.sql_filter()
        if where_filter is not None:  # the table's row filter (one without op)
            conds.append(sql.SQL("({})").format(sql.SQL(where_filter)))
        where: sql.Composable = (sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)
                                 if conds else sql.SQL(""))
        query = sql.SQL("SELECT {} FROM {}{} ORDER BY {} LIMIT {}").format(
            cols, info.ident(), where, order, sql.Literal(self.chunk_size))
        try:
            cur = await self.conn.execute(query, params)
        except psycopg.OperationalError as e:
            raise SourceUnavailable(f"snapshot of {info.qualified} failed: {e}") from None
        res = cur.pgresult
        assert res is not None
        n, width = res.ntuples, len(info.columns)
        rows: list[list[str | None]] = []
        ctids: list[str] = []
        for r in range(n):
            rows.append([None if (v := res.get_value(r, c)) is None else bytes(v).decode()
                         for c in range(width)])
            if by_ctid:
                ctids.append(bytes(res.get_value(r, width) or b"").decode())
        return rows, ctids


def _progress(info: TableInfo, done: int, elapsed_s: float, final: bool = False) -> None:
    est = max(info.estimated_rows, done)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    log.info("snapshot %s: %d/%d rows (%d%%), %.0f rows/s%s", info.qualified, done, est,
             100 * done // est if est else 100, rate, ", table done" if final else "")
