"""``type: postgres``: the adapter the daemon runs; wires set-up, snapshot and stream.

:meth:`PostgresAdapter.changes` decides, from the committed checkpoint and the slot's
state, what to do (``snapshot`` mode in brackets):

================================  ==================================================
no checkpoint, no slot            create the slot; [initial, when_needed] copy from its
                                  exported snapshot, then stream; [never] stream
no checkpoint, slot exists        [never] stream from the slot; [initial, when_needed]
                                  copy under a fresh snapshot + filter, then stream
checkpoint, snapshot unfinished   resume the copy (fresh snapshot + filter), then stream
checkpoint, slot exists           stream from the checkpoint
checkpoint, slot missing          [when_needed] new slot and a new snapshot generation;
                                  otherwise a SourceSetupError: changes were lost
================================  ==================================================

Re-snapshots on demand (``cdc-bridge snapshot``, :meth:`PostgresAdapter.request_snapshot`)
run while streaming, chunk by chunk, interleaved with the stream (see
:mod:`cdc_bridge.adapters.postgres.resnap_state` for the guarantee); their progress is part of the
checkpoint, so a restarted adapter resumes them, and :meth:`snapshot_progress` reports
what the committed checkpoint says.

Outbox tables (``outbox_tables``, :mod:`cdc_bridge.adapters.postgres.outbox`) share the
publication, the slot and the snapshot with the captured tables; their rows become
routed messages instead of events.

Failures of the source (connection refused or cut, server restart) raise
:class:`cdc_bridge.kernel.errors.SourceUnavailable`; the daemon's supervisor backs off (the shared
policy of :mod:`cdc_bridge.kernel.backoff`) and builds a new adapter from the last committed
checkpoint. What a person must fix raises :class:`cdc_bridge.kernel.errors.SourceSetupError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from psycopg import sql as psql

from cdc_bridge.adapters.contract import (
    AdapterContext,
    ChangeBatch,
    Checkpoint,
    SnapshotReport,
    SnapshotRequestError,
)
from cdc_bridge.adapters.postgres import identity
from cdc_bridge.adapters.postgres import pgoutput as po
from cdc_bridge.adapters.postgres import tables as tables_mod
from cdc_bridge.adapters.postgres.changes import EventBuilder
from cdc_bridge.adapters.postgres.config import PostgresConfig, split_name
from cdc_bridge.adapters.postgres.heartbeat import run_heartbeat
from cdc_bridge.adapters.postgres.position import Position
from cdc_bridge.adapters.postgres.replication import ReplicationConnection, connection_error
from cdc_bridge.adapters.postgres.resnap_state import ResnapProgress
from cdc_bridge.adapters.postgres.resnapshot import Resnapshotter, where_sql
from cdc_bridge.adapters.postgres.setup import (
    SourceInfo,
    TableInfo,
    check_server,
    check_slot,
    ensure_publication,
    resolve_outbox_tables,
    resolve_tables,
    slot_info,
)
from cdc_bridge.adapters.postgres.snapshot import SnapshotReader, fresh_snapshot, import_snapshot
from cdc_bridge.adapters.postgres.stream import StreamReader
from cdc_bridge.adapters.postgres.tables import TableWatch
from cdc_bridge.adapters.postgres.values import ValueDecoder
from cdc_bridge.adapters.snapshot_progress import SnapshotProgress
from cdc_bridge.adapters.snapshot_where import refuse_unusable
from cdc_bridge.kernel.errors import SourceSetupError, SourceUnavailable

log = logging.getLogger("cdc_bridge.adapter.postgres")

SqlConn = psycopg.AsyncConnection[tuple[Any, ...]]


class PostgresAdapter:
    def __init__(self, config: PostgresConfig, context: AdapterContext) -> None:
        self.name = config.name
        self.config = config
        self.context = context
        self._sql: SqlConn | None = None
        #: The captured tables as the catalogue had them at start, before set-up.
        self._before: dict[str, tables_mod.Seen] = {}
        self._copy: SqlConn | None = None
        self._repl: ReplicationConnection | None = None
        self._stream: StreamReader | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._resets: set[asyncio.Task[None]] = set()
        self._user = ""
        self._values: ValueDecoder | None = None
        self._pos: Position | None = None
        self._resnap: Resnapshotter | None = None
        #: Re-snapshot progress as of the last acknowledged (committed) checkpoint.
        self._committed: ResnapProgress | None = None
        self._ready = asyncio.Event()
        #: Set up and capturing (snapshot or stream); see the source contract.
        self.connected = False
        self._claimed = False

    # ---------------------------------------------------------------- set-up

    async def _connect(self) -> SqlConn:
        try:
            conn: SqlConn = await psycopg.AsyncConnection.connect(
                self.config.dsn, autocommit=True,
                connect_timeout=max(1, int(self.config.connect_timeout)),
                application_name="cdc-bridge")
        except psycopg.OperationalError as e:
            # wrong password, unknown role/database, pg_hba: fatal with a hint; else retry
            raise connection_error(f"{self.name}: cannot connect to PostgreSQL",
                                   _first_line(e)) from None
        return conn

    async def _setup(self) -> SourceInfo:
        self._sql = sql = await self._connect()
        user, database = await check_server(sql)
        self._user = user
        tables = await resolve_tables(sql, self.config, user)
        outbox = await resolve_outbox_tables(sql, self.config, user)
        info = SourceInfo(tables, user, database, outbox=outbox)
        # as found, before ensure_publication puts every table (back) in the publication
        self._before = await tables_mod.look(sql, {t.qualified: t for t in tables},
                                             self.config.publication_name())
        info.actions += await ensure_publication(sql, self.config, tables + outbox, user)
        for line in info.actions:
            log.info("%s: %s", self.name, line)
        self._values = ValueDecoder(sql)
        await self._values.ensure_types(
            sql, {c.type_oid for t in tables + outbox for c in t.columns})
        return info

    async def init(self) -> list[str]:
        """``cdc-bridge init``: publication and slot, without snapshot or streaming."""
        try:
            info = await self._setup()
            assert self._sql is not None
            slot = self.config.slot_name()
            existing = await slot_info(self._sql, slot)
            if existing is not None:
                check_slot(existing, slot, info.database)
                return [*info.actions, f"replication slot {slot} exists "
                        f"(confirmed_flush_lsn {existing.confirmed_flush_lsn})"]
            repl = ReplicationConnection(self.config.dsn, self.config.connect_timeout)
            await repl.connect()
            try:
                created = await repl.create_slot(slot, export_snapshot=False)
            finally:
                repl.close()
            return [*info.actions, f"created replication slot {slot} at "
                    f"{created.consistent_point} (the snapshot, if any, runs on first start)"]
        finally:
            await self.close()

    async def _plan(self, pos: Position | None, info: SourceInfo) -> Position:
        """Decide snapshot/stream (module docstring) and open what the copy needs."""
        cfg = self.config
        assert self._sql is not None
        slot = cfg.slot_name()
        existing = await slot_info(self._sql, slot)
        if existing is not None:
            check_slot(existing, slot, info.database)
            if self._marks():
                owner = await identity.read_owner(self._sql, cfg.publication_name())
                assert self.context.store_id is not None
                identity.check(owner, slot, self.context.store_id, self.name, pos is not None)
        names = [t.qualified for t in info.tables + info.outbox]
        wants = cfg.snapshot != "never"
        if existing is None:
            if not cfg.create_slot:
                raise SourceSetupError(f"replication slot {slot} does not exist (create_slot: "
                                       "false): create it or set create_slot: true")
            if pos is not None and cfg.snapshot != "when_needed":
                raise SourceSetupError(
                    f"replication slot {slot} is missing but capture ran before (checkpoint "
                    f"at {po.lsn_to_str(pos.lsn)}): changes since then may be lost. Set "
                    "snapshot: when_needed to take a new snapshot, or remove the "
                    "adapter's checkpoint to start afresh")
            fresh = pos is None or cfg.snapshot == "when_needed"
            return await self._create_slot(slot, names, (pos.gen if pos else 0) + 1,
                                           wants and fresh)
        if pos is None:
            pos = Position()
            if wants:
                pos.gen = 1
                pos.snapshot = SnapshotProgress(1, 0, names,
                                                origin=existing.confirmed_flush_lsn or "")
        if pos.snapshot is not None:
            self._copy = await self._connect()
            assert self._values is not None
            await fresh_snapshot(self._copy, pos, {**self._tables, **self._outbox},
                                 self._builder())
        return pos

    async def _create_slot(self, slot: str, names: list[str], gen: int,
                           snapshot: bool) -> Position:
        repl = ReplicationConnection(self.config.dsn, self.config.connect_timeout)
        await repl.connect()
        try:
            created = await repl.create_slot(slot, export_snapshot=snapshot)
            log.info("%s: created replication slot %s at %s", self.name, slot,
                     created.consistent_point)
            pos = Position(lsn=po.str_to_lsn(created.consistent_point))
            if snapshot and created.snapshot_name:
                self._copy = await self._connect()
                await import_snapshot(self._copy, created.snapshot_name)
                pos.gen = gen
                pos.snapshot = SnapshotProgress(gen, 0, names,
                                                origin=created.consistent_point)
            return pos
        finally:
            repl.close()  # the importing transaction now holds the snapshot

    # ---------------------------------------------------------------- Adapter

    async def changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        try:
            async for batch in self._changes(checkpoint):
                yield batch
        except psycopg.OperationalError as e:
            raise SourceUnavailable(f"{self.name}: PostgreSQL failed: {_first_line(e)}"
                                    ) from None

    async def _changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        pos = Position.from_checkpoint(checkpoint)
        info = await self._setup()
        self._tables = info.by_name()
        self._outbox = {t.qualified: t for t in info.outbox}
        pos = await self._plan(pos, info)
        if checkpoint:
            await self._changed_while_away(pos)
        pos.oids = {name: t.oid for name, t in self._tables.items()}
        self._pos = pos
        if pos.resnapshot is not None:
            self._committed = ResnapProgress.from_json(pos.resnapshot.to_json())
            if not pos.resnapshot.finished:
                pos.resnapshot.attempt += 1  # chunks read again get new event ids
                log.info("%s: re-snapshot gen %d resumes: %d/%d rows, tables left: %s",
                         self.name, pos.resnapshot.gen, pos.resnapshot.rows,
                         pos.resnapshot.total, ", ".join(pos.resnapshot.remaining()))
        self._ready.set()
        self.connected = True
        builder = self._builder()
        if pos.snapshot is not None:
            assert self._copy is not None
            reader = SnapshotReader(self._copy, builder, self._tables, pos,
                                    self.config.snapshot_chunk_size, self._outbox)
            async for batch in reader.batches():
                yield batch
            await self._copy.close()
            self._copy = None
        self._repl = ReplicationConnection(self.config.dsn, self.config.connect_timeout)
        await self._repl.connect()
        self._stream = stream = StreamReader(self.config, self._repl, builder, pos,
                                             self._prepare_relation)
        stream.resnap = self._resnap = Resnapshotter(
            self.name, self.config.dsn, self.config.connect_timeout, builder, self._tables, pos,
            self.config.snapshot_chunk_size)
        if self.config.heartbeat_interval > 0:
            self._heartbeat = asyncio.create_task(run_heartbeat(
                self.name, self.config.dsn, self.config.heartbeat_interval, stream.idle_s))
        stream.on_reset = self._table_back
        if self.config.table_check_interval > 0:
            watch = TableWatch(self.name, self.config, self._tables, self._user,
                               lambda e: setattr(stream, "failure", e), pos.oids)
            self._watch = asyncio.create_task(watch.run(), name=f"{self.name}-tables")
        async for batch in stream.batches():
            yield batch

    async def _changed_while_away(self, pos: Position) -> None:
        """A table re-created or taken out of the publication while no check watched
        (the bridge stopped, or restarted before its next table check): the start has
        put it back in the publication, so nothing else would ever say that changes are
        missing. Same answer as the running check: a ``t`` and a re-snapshot, or stop."""
        assert self._sql is not None
        now = {name: t.oid for name, t in self._tables.items()}
        for table, kind in tables_mod.drift_while_away(pos.oids, self._before, now):
            info = self._tables[table]
            what = tables_mod.check_repairable(self.name, self.config, table, kind,
                                               self._before[table].published, info)
            await tables_mod.restore(self._sql, info, self.config.publication_name(),
                                     add=False)
            log.warning("%s: table %s %s while capture was not watching; a t event and a "
                        "re-snapshot of its rows follow", self.name, table, what,
                        extra={"table": table})

    def _table_back(self, table: str) -> None:
        """The stream reached a table's reset (tables.py): re-snapshot that table."""
        if self._resnap is not None:
            self._resnap.forget(table)
        task = asyncio.get_running_loop().create_task(self.request_snapshot([table]))
        self._resets.add(task)
        task.add_done_callback(self._resets.discard)

    def lag(self) -> dict[str, float]:
        return {"bytes": float(self._stream.lag_bytes)} if self._stream is not None else {}

    def _marks(self) -> bool:
        """The publication carries the slot's owner (managed mode, inside the daemon)."""
        return self.config.publication_mode == "managed" and self.context.store_id is not None

    async def _claim(self) -> None:
        """After the first commit: mark the publication with this outbox (identity)."""
        self._claimed = True
        if not self._marks() or self._sql is None:
            return
        pub, slot = self.config.publication_name(), self.config.slot_name()
        assert self.context.store_id is not None
        owner = identity.Owner(slot, self.context.store_id)
        try:
            if await identity.read_owner(self._sql, pub) != owner:
                await identity.claim(self._sql, pub, slot, owner.store)
                log.info("%s: publication %s marked: slot %s belongs to outbox %s", self.name,
                         pub, slot, owner.store)
        except psycopg.Error as e:  # e.g. not the publication's owner: capture goes on
            log.warning("%s: cannot mark publication %s with this outbox (%s): a reset or "
                        "replaced outbox will not be detected", self.name, pub, _first_line(e))

    async def reset(self) -> list[str]:
        """``cdc-bridge reset-source``: drop the slot and the mark; a new start snapshots."""
        try:
            self._sql = sql = await self._connect()
            slot, pub = self.config.slot_name(), self.config.publication_name()
            actions = []
            existing = await slot_info(sql, slot)
            if existing is not None and existing.active:
                raise SourceSetupError(f"replication slot {slot} is in use: stop the daemon "
                                       "that reads it first")
            if existing is not None:
                await sql.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                actions.append(f"dropped replication slot {slot} "
                               f"(it was at {existing.confirmed_flush_lsn})")
            if self.config.publication_mode == "managed" and \
                    await identity.read_owner(sql, pub) is not None:
                await identity.claim(sql, pub, slot, None)
                actions.append(f"cleared the outbox mark on publication {pub}")
            return actions or [f"nothing to undo at the source (no slot {slot})"]
        finally:
            await self.close()

    async def take_over(self) -> list[str]:
        """Group mode: end the replication session another member still has on the slot
        (a paused or cut-off process), then wait (a few seconds at most) until the slot
        is free."""
        slot = self.config.slot_name()
        sql = await self._connect()
        actions: list[str] = []
        try:
            cur = await sql.execute(
                "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active AND active_pid <> pg_backend_pid()", (slot,))
            for pid, _ in await cur.fetchall():
                actions.append(f"ended the session (backend pid {pid}) still reading slot "
                               f"{slot}")
            for _ in range(50):
                if not actions:
                    break
                cur = await sql.execute("SELECT active FROM pg_replication_slots"
                                        " WHERE slot_name = %s", (slot,))
                row = await cur.fetchone()
                if row is None or not row[0]:
                    break
                await asyncio.sleep(0.1)
        except psycopg.Error as e:
            raise SourceUnavailable(f"{self.name}: cannot take slot {slot} over: "
                                    f"{_first_line(e)}") from None
        finally:
            with contextlib.suppress(Exception):
                await sql.close()
        for line in actions:
            log.info("%s: %s", self.name, line)
        return actions

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None and not self._claimed:
            await self._claim()
        if checkpoint is not None and self._stream is not None:
            self._stream.acknowledge(po.str_to_lsn(checkpoint["lsn"]))
        if checkpoint is not None and checkpoint.get("resnapshot"):
            self._committed = ResnapProgress.from_json(checkpoint["resnapshot"])

    # ---------------------------------------------------------------- re-snapshots

    #: Partial backfills (:class:`~cdc_bridge.adapters.contract.SupportsPartialSnapshot`).
    partial_snapshots = True

    async def request_snapshot(self, tables: list[str] | None, where: str | None = None
                               ) -> None:
        """Queue a re-snapshot of ``tables`` (all captured tables when ``None``), of the
        rows matching ``where`` only when given (a partial backfill)."""
        try:
            await asyncio.wait_for(self._ready.wait(), 60.0)
        except TimeoutError:
            raise SnapshotRequestError(f"adapter {self.name} is not capturing yet") from None
        pos = self._pos
        assert pos is not None
        names = self._snapshot_tables(tables)
        if where is not None:
            await self._check_where(names, where)
        rows = "" if where is None else f" (rows where {where})"
        current = pos.resnapshot
        if current is None or current.finished:
            pos.gen += 1
            current = pos.resnapshot = ResnapProgress(
                (current.seq if current else 0) + 1, pos.gen, tables=names,
                wheres={} if where is None else dict.fromkeys(names, where))
            log.info("%s: re-snapshot gen %d requested: %s%s", self.name, current.gen,
                     ", ".join(names), rows)
        else:
            current.merge(names, where)
            current.seq += 1
            log.info("%s: re-snapshot gen %d (running) now also covers: %s%s", self.name,
                     current.gen, ", ".join(names), rows)
        if self._stream is not None:
            self._stream.request()

    async def _check_where(self, names: list[str], where: str) -> None:
        """Refuse a ``where`` that cannot select rows of every table: syntax, columns,
        and what PostgreSQL says of it (types), with a query that reads no row."""
        refuse_unusable(self.name, where,
                        {t: [c.name for c in self._tables[t].columns] for t in names})
        cond = where_sql(where)
        assert cond is not None
        try:
            conn = await self._connect()
        except Exception as e:
            raise SnapshotRequestError(f"adapter {self.name}: cannot check --where: "
                                       f"{e}") from None
        try:
            for t in names:
                query = psql.SQL("SELECT 1 FROM {} WHERE {} LIMIT 0").format(
                    self._tables[t].ident(), cond)
                try:
                    await conn.execute(query)
                except psycopg.Error as e:
                    raise SnapshotRequestError(f"--where {where}: table {t}: "
                                               f"{_first_line(e)}") from None
        finally:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    def _snapshot_tables(self, tables: list[str] | None) -> list[str]:
        known = self._tables
        if not tables:
            keyless = [t for t, info in known.items() if not info.primary_key]
            if keyless:
                log.warning("%s: re-snapshot skips tables without a primary key: %s",
                            self.name, ", ".join(keyless))
            names = [t for t, info in known.items() if info.primary_key]
            if not names:
                raise SnapshotRequestError(f"adapter {self.name}: no captured table has a "
                                           "primary key (a live re-snapshot needs one)")
            return names
        names = []
        for t in tables:
            qualified = "{}.{}".format(*split_name(t))
            info = known.get(qualified)
            if info is None:
                raise SnapshotRequestError(
                    f"table {t!r} is not captured by adapter {self.name} (captured: "
                    f"{', '.join(sorted(known)) or 'none'})")
            if not info.primary_key:
                raise SnapshotRequestError(
                    f"table {qualified} has no primary key: a live re-snapshot reads and "
                    "matches rows by primary key")
            if qualified not in names:
                names.append(qualified)
        return names

    def snapshot_progress(self) -> SnapshotReport | None:
        if not self._ready.is_set() or self._pos is None:
            return None
        return SnapshotReport.of(self._pos.resnapshot, self._committed)

    async def close(self) -> None:
        self.connected = False
        for task in (self._heartbeat, self._watch, *self._resets):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._heartbeat = self._watch = None
        self._resets.clear()
        if self._resnap is not None:
            await self._resnap.close()
            self._resnap = None
        if self._repl is not None:
            self._repl.close()
            self._repl = None
        for conn in (self._copy, self._sql):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._copy = self._sql = None

    # ---------------------------------------------------------------- helpers

    _tables: dict[str, TableInfo]
    _outbox: dict[str, TableInfo]

    def _builder(self) -> EventBuilder:
        assert self._values is not None
        return EventBuilder(self.name, self._tables, self._values, self._outbox)

    async def _prepare_relation(self, rel: po.Relation) -> None:
        """A Relation message arrived: look up the types it names that are still unknown,
        then describe the table (its shape, with ``attnotnull`` read now: one query per
        Relation message, which the server sends once per table and session and after
        each change of the table)."""
        assert self._values is not None and self._sql is not None
        oids = {c.type_oid for c in rel.columns}
        try:
            if self._values.missing(oids):
                await self._values.ensure_types(self._sql, oids)
            builder = self._stream.builder if self._stream is not None else None
            state = builder.relations.get(rel.oid) if builder is not None else None
            if builder is not None and state is not None and state.captured \
                    and not state.outbox:
                cur = await self._sql.execute(_NOT_NULL_SQL, (rel.oid,))
                not_null = {str(n): bool(v) for n, v in await cur.fetchall()}
                # a column the catalogue no longer has was dropped after the message was
                # written (the stream is behind): taken as nullable, as a replay after a
                # restart must describe the look as the first reading did
                builder.describe(state, {n: not_null.get(n, False) for n in state.names})
        except psycopg.OperationalError as e:
            raise SourceUnavailable(f"{self.name}: catalogue lookup failed: "
                                    f"{_first_line(e)}") from None


#: Nullability of a relation's columns now (a Relation message does not carry it).
_NOT_NULL_SQL = """
SELECT attname, attnotnull FROM pg_attribute
 WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped
"""


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
