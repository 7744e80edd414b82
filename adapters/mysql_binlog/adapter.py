"""``type: mysql_binlog``: the adapter the daemon runs; wires checks, snapshot and stream.

:meth:`MysqlBinlogAdapter.changes` decides from the committed checkpoint:

===============================  ====================================================
no checkpoint                    [initial, when_needed] consistent snapshot, then stream
                                 from its binlog position; [never] stream from the end
checkpoint, snapshot unfinished  resume the copy under a new snapshot + filter, stream
checkpoint, binlog still there   stream from the checkpoint
checkpoint, binlog purged        [when_needed] a new snapshot (new generation);
                                 otherwise a SourceSetupError saying how to recover
===============================  ====================================================

Re-snapshots on demand (``cdc-bridge snapshot``, :meth:`MysqlBinlogAdapter.request_snapshot`)
run while streaming, chunk by chunk, each chunk placed in the stream at the binlog
position it was read at (:mod:`.resnapshot`); their progress is in the checkpoint, so a
restarted adapter resumes them, and :meth:`MysqlBinlogAdapter.snapshot_progress` reports
what the committed checkpoint says.

Blocking PyMySQL work runs in worker threads; the binlog itself in
:class:`~.stream.BinlogReader`'s thread. ``lag()`` is the bytes of log not yet read
(``SHOW BINARY LOGS``, polled every few seconds) and the seconds since the server wrote
the last event read, 0 once the reader is at the end of the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pymysql

from cdc_bridge.adapters.contract import (
    AdapterContext,
    ChangeBatch,
    Checkpoint,
    SnapshotReport,
    SnapshotRequestError,
)
from cdc_bridge.adapters.mysql_binlog import setup
from cdc_bridge.adapters.mysql_binlog.changes import (
    EventBuilder,
    Heartbeat,
    Record,
    TableFilter,
    TxAssembler,
)
from cdc_bridge.adapters.mysql_binlog.config import MysqlBinlogConfig
from cdc_bridge.adapters.mysql_binlog.position import (
    BinlogPos,
    Position,
    ResnapProgress,
)
from cdc_bridge.adapters.mysql_binlog.resnapshot import Resnapshotter, resolve
from cdc_bridge.adapters.mysql_binlog.snapshot import (
    commit,
    open_snapshot,
    read_chunk,
    resume_filter,
)
from cdc_bridge.adapters.mysql_binlog.stream import BinlogReader
from cdc_bridge.adapters.mysql_binlog.values import RowConverter
from cdc_bridge.adapters.snapshot_progress import SnapshotProgress
from cdc_bridge.adapters.snapshot_where import refuse_unusable
from cdc_bridge.kernel.errors import SourceSetupError, SourceUnavailable

log = logging.getLogger("cdc_bridge.adapter.mysql_binlog")

#: Seconds between two ``SHOW BINARY LOGS`` for ``lag()``.
LAG_POLL_S = 2.0


class MysqlBinlogAdapter:
    def __init__(self, config: MysqlBinlogConfig, context: AdapterContext) -> None:
        self.name = config.name
        self.config = config
        self.context = context
        specs = config.table_specs()
        self.tables = TableFilter([t.name for t in specs], config.exclude_tables,
                                  {t.name: t.columns for t in specs},
                                  {t.name: t.filter for t in specs})
        self._sql: setup.Conn | None = None
        self._copy: setup.Conn | None = None
        self._reader: BinlogReader | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._files: list[tuple[str, int]] = []
        self._meta: dict[str, setup.TableMeta] = {}
        self._closed = False
        self._pos: Position | None = None
        self._ready = asyncio.Event()
        self._resnap: Resnapshotter | None = None
        #: The re-snapshot run as the last committed checkpoint has it.
        self._committed: ResnapProgress | None = None
        #: Set up and capturing (snapshot or stream); see the source contract.
        self.connected = False

    # ---------------------------------------------------------------- set-up

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except pymysql.err.OperationalError as e:
            raise setup.connection_error(self.name, e) from None
        except (pymysql.err.InterfaceError, OSError) as e:
            raise SourceUnavailable(f"{self.name}: connection failed: {e}") from None

    async def _setup(self) -> setup.Conn:
        conn: setup.Conn = await self._run(setup.connect, self.config)
        self._sql = conn
        problems = await self._run(setup.check_server, conn, self.config)
        if problems:
            raise SourceSetupError(f"{self.name}: the server is not set up for binlog "
                                   "capture:\n" + "\n".join(f"  - {p}" for p in problems))
        metas: list[setup.TableMeta] = await self._run(setup.resolve_tables, conn, self.tables)
        self._meta = {m.qualified: m for m in metas}
        for m in metas:
            rf = self.tables.filter_for(m.schema, m.table)
            unknown = rf.unknown_columns({c.name for c in m.columns}) if rf else []
            if unknown:
                raise SourceSetupError(
                    f"{self.name}: the filter of {m.qualified} reads "
                    f"{', '.join(map(repr, unknown))}, which the table does not have")
        if not metas:
            log.warning("%s: no configured table exists yet (%s)", self.name,
                        ", ".join(self.tables.patterns))
        return conn

    async def init(self) -> list[str]:
        """``cdc-bridge init``: check the server and the tables; nothing to create."""
        try:
            conn = await self._setup()
            at: BinlogPos = await self._run(setup.current_position, conn)
            return [f"server set up for binlog capture (row format, full images and "
                    f"metadata, privileges, server_id {self.config.replica_id()} free)",
                    f"tables captured: {', '.join(sorted(self._meta)) or 'none yet'}",
                    f"binlog currently at {at} (the snapshot, if any, runs on first start)"]
        finally:
            await self.close()

    async def _plan(self, pos: Position | None, conn: setup.Conn) -> Position:
        cfg = self.config
        names = sorted(self._meta)
        if pos is None:
            if cfg.snapshot == "never":
                return Position(at=await self._run(setup.current_position, conn))
            return await self._new_snapshot(1, names)
        available = await self._run(setup.check_available, conn, self.name, pos.resume_at())
        if not available:
            if cfg.snapshot != "when_needed":
                raise setup.purged_error(self.name, pos.resume_at())
            log.warning("%s: binlog position %s was purged: taking a new snapshot",
                        self.name, pos.resume_at())
            return await self._new_snapshot(pos.gen + 1, names)
        if pos.snapshot is not None:
            self._copy = await self._run(setup.connect, cfg)
            at = await self._run(open_snapshot, self._copy)
            resume_filter(pos, at, self._meta)
            log.info("%s: snapshot resumes under a new snapshot at %s (attempt %d): %d "
                     "table(s) left", self.name, at, pos.snapshot.attempt,
                     len(pos.snapshot.remaining()))
        return pos

    async def _new_snapshot(self, gen: int, names: list[str]) -> Position:
        self._copy = await self._run(setup.connect, self.config)
        at = await self._run(open_snapshot, self._copy)
        log.info("%s: snapshot gen %d of %d table(s) at binlog %s", self.name, gen,
                 len(names), at)
        return Position(at=at, gen=gen,
                        snapshot=SnapshotProgress(gen, 0, names, origin=str(at)))

    # ---------------------------------------------------------------- Adapter

    async def changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        pos = Position.from_checkpoint(checkpoint)
        conn = await self._setup()
        pos = await self._plan(pos, conn)
        self._pos = pos
        resnap = pos.resnapshot
        if resnap is not None:
            self._committed = ResnapProgress.from_json(resnap.to_json())
            if not resnap.finished:
                resnap.attempt += 1  # chunks read again get new event ids
                log.info("%s: re-snapshot gen %d resumes: %d/%d rows, tables left: %s",
                         self.name, resnap.gen, resnap.rows, resnap.total,
                         ", ".join(resnap.remaining()))
        self._ready.set()
        self.connected = True
        builder = EventBuilder(self.name, self.tables,
                               utc_datetimes=self.config.datetime_timezone is not None)
        if pos.snapshot is not None:
            async for batch in self._snapshot(pos, builder):
                yield batch
        self._lag_task = asyncio.create_task(self._poll_lag())
        async for batch in self._stream(pos, builder):
            yield batch

    async def _snapshot(self, pos: Position, builder: EventBuilder
                        ) -> AsyncIterator[ChangeBatch]:
        progress = pos.snapshot
        assert progress is not None and self._copy is not None
        zone = self.config.datetime_timezone
        import zoneinfo

        tz = None if zone is None else zoneinfo.ZoneInfo(zone)
        for name in progress.remaining():
            meta = self._meta.get(name)
            if meta is None:
                progress.done.append(name)
                continue
            if progress.current != name:
                progress.current, progress.after = name, None
            conv = RowConverter(meta.columns, tz)
            shape = builder.shape(meta.schema, meta.table, meta.facts, meta.key)
            idx = [i for i, c in enumerate(meta.columns) if c.name in meta.key]
            while True:
                rows = await self._run(read_chunk, self._copy, meta, progress.after,
                                       self.config.snapshot_chunk_size)
                if not rows:
                    break
                now_ms = int(time.time() * 1000)
                batch = ChangeBatch()
                base = int(progress.after[1]) if not meta.key and progress.after else 0
                for n, raw in enumerate(rows):
                    row_key = [raw[i] for i in idx] if meta.key else [base + n]
                    event = builder.snapshot_event(
                        meta.schema, meta.table, meta.key, conv.from_select(raw),
                        progress.id_prefix(), row_key, now_ms, shape=shape)
                    if event is not None:
                        batch.events.append(event)
                progress.after = ([rows[-1][i] for i in idx] if meta.key
                                  else ["#offset", base + len(rows)])
                progress.rows += len(rows)
                batch.checkpoint = pos.to_checkpoint()
                yield batch
                if len(rows) < self.config.snapshot_chunk_size:
                    break
            progress.done.append(name)
            progress.current, progress.after = None, None
        await self._run(commit, self._copy)
        await self._run(self._copy.close)
        self._copy = None
        pos.snapshot = None
        log.info("%s: snapshot gen %d done: %d rows", self.name, progress.gen, progress.rows)
        yield ChangeBatch([], pos.to_checkpoint())

    async def _stream(self, pos: Position, builder: EventBuilder
                      ) -> AsyncIterator[ChangeBatch]:
        cfg = self.config
        asm = TxAssembler(builder, pos)
        resnap = self._resnap = Resnapshotter(cfg, builder, self._meta, pos, self._run)
        asm.observer = resnap.observe
        reader = self._reader = BinlogReader(cfg, pos.resume_at(), self.tables,
                                             asyncio.get_running_loop())
        reader.start()
        log.info("%s: streaming the binlog from %s", self.name, pos.resume_at(),
                 extra={"position": str(pos.resume_at())})
        batch = ChangeBatch()
        last = asm.checkpoint()
        first_at = 0.0
        while True:
            if resnap.wants_chunk() and not asm.in_transaction:
                await resnap.read_chunk(pos.at)
                released = resnap.release_at(pos.at)
                if released is not None or resnap.held is None:
                    batch.events += released or []
                    batch.checkpoint = last = asm.checkpoint()
                    yield batch
                    batch = ChangeBatch()
                continue
            timeout = None
            if batch.events:
                timeout = max(0.0, first_at + cfg.max_batch_delay - time.monotonic())
            elif asm.checkpoint() != last:
                timeout = 1.0  # an idle position move: commit it now and then
            try:
                records = await asyncio.wait_for(reader.get(), timeout)
            except TimeoutError:
                batch.checkpoint = last = asm.checkpoint()
                yield batch
                batch = ChangeBatch()
                continue
            for rec in records:
                events = asm.feed(rec)
                released = self._release(rec, asm)
                if events or released is not None:
                    if not batch.events:
                        first_at = time.monotonic()
                    batch.events += events
                    batch.events += released or []
                    if released is not None or len(batch.events) >= cfg.batch_size:
                        batch.checkpoint = last = asm.checkpoint()
                        yield batch
                        batch = ChangeBatch()

    def _release(self, rec: Record, asm: TxAssembler) -> list[Any] | None:
        """A held re-snapshot chunk's ``r`` events once the stream has passed its position
        (between transactions; a heartbeat says where the server's log is)."""
        resnap = self._resnap
        if resnap is None or resnap.held is None or asm.in_transaction:
            return None
        at = asm.pos.at
        if isinstance(rec, Heartbeat) and at.before(rec.at):
            at = rec.at
        return resnap.release_at(at)

    # ---------------------------------------------------------------- lag

    async def _poll_lag(self) -> None:
        conn: setup.Conn | None = None
        try:
            while True:
                try:
                    if conn is None:
                        conn = await self._run(setup.connect, self.config)
                    self._files = await self._run(setup.binlog_files, conn)
                except Exception:
                    conn = None
                await asyncio.sleep(LAG_POLL_S)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def lag(self) -> dict[str, float]:
        reader = self._reader
        if reader is None or not self._files:
            return {}
        behind = setup.lag_bytes(self._files, reader.read_to)
        seconds = 0.0
        if behind > 0 and reader.event_ts_ms:
            seconds = max(0.0, time.time() - reader.event_ts_ms / 1000)
        return {"bytes": float(behind), "seconds": float(seconds)}

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        # the server keeps its logs by time, not by our position: nothing to release
        if checkpoint is not None and checkpoint.get("resnapshot"):
            self._committed = ResnapProgress.from_json(checkpoint["resnapshot"])

    # ---------------------------------------------------------------- re-snapshots

    #: Partial backfills (:class:`~cdc_bridge.adapters.contract.SupportsPartialSnapshot`).
    partial_snapshots = True

    async def request_snapshot(self, tables: list[str] | None, where: str | None = None
                               ) -> None:
        """Queue a re-snapshot of ``tables`` (``db.table`` or a unique ``table``; all
        captured tables with a primary key when ``None``), of the rows matching
        ``where`` only when given (a partial backfill)."""
        try:
            await asyncio.wait_for(self._ready.wait(), 60.0)
        except TimeoutError:
            raise SnapshotRequestError(f"adapter {self.name} is not capturing yet") from None
        pos = self._pos
        assert pos is not None
        names, problems = resolve(tables, self._meta)
        if problems:
            raise SnapshotRequestError(f"adapter {self.name}: " + "; ".join(problems))
        if not names:
            raise SnapshotRequestError(f"adapter {self.name}: no captured table has a primary "
                                       "key (a live re-snapshot needs one)")
        if where is not None:
            self._check_where(names, where)
        rows = "" if where is None else f" (rows where {where})"
        current = pos.resnapshot
        if current is None or current.finished:
            pos.gen += 1
            current = pos.resnapshot = ResnapProgress(
                (current.seq if current else 0) + 1, pos.gen, str(pos.at), tables=names,
                wheres={} if where is None else dict.fromkeys(names, where))
            log.info("%s: re-snapshot gen %d requested: %s%s", self.name, current.gen,
                     ", ".join(names), rows)
        else:
            current.merge(names, where)
            current.seq += 1
            log.info("%s: re-snapshot gen %d (running) now also covers: %s%s", self.name,
                     current.gen, ", ".join(names), rows)
        reader = self._reader
        if reader is not None:  # wake an idle stream loop
            with contextlib.suppress(asyncio.QueueFull):
                reader.queue.put_nowait([])

    def _check_where(self, names: list[str], where: str) -> None:
        """Refuse a ``where`` that does not parse, reads ``op`` or names a column one of
        the tables lacks (as captured; a table altered since is checked at its read)."""
        refuse_unusable(self.name, where,
                        {t: [c.name for c in self._meta[t].columns] for t in names})

    def snapshot_progress(self) -> SnapshotReport | None:
        if not self._ready.is_set() or self._pos is None:
            return None
        return SnapshotReport.of(self._pos.resnapshot, self._committed)

    async def close(self) -> None:
        self.connected = False
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(BaseException):
                await self._lag_task
            self._lag_task = None
        if self._resnap is not None:
            await self._resnap.close()
            self._resnap = None
        if self._reader is not None:
            self._reader.close()
            await self._reader.join()
            self._reader = None
        for conn in (self._copy, self._sql):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        self._copy = self._sql = None
