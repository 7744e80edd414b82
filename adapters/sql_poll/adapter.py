"""The ``sql_poll`` adapter: schedules the tables' polls and turns them into batches.

Each configured table becomes a runner
(:class:`~cdc_bridge.adapters.sql_poll.cursor_mode.CursorTable`
or :class:`~cdc_bridge.adapters.sql_poll.diff_mode.DiffTable`). The loop runs one *unit* at a time
(one page of a cursor poll, one step of a diff pass) in a worker thread, round-robin
over the tables that are due, and yields one :class:`ChangeBatch` per unit carrying the
checkpoint of every table. The daemon commits it before asking for the next, so the
in-memory state of all tables always equals what is committed, plus the one batch in
flight. A table with more to read (a full page, a pass in progress) stays due; others
wait for their ``poll_interval``.

Re-snapshots on demand (:meth:`SqlPollAdapter.request_snapshot`): a cursor-mode table
walks its rows by primary key in pages that take turns with its normal polls
(:mod:`cdc_bridge.adapters.sql_poll.resnapshot`); a diff table runs a full pass at once (see
:mod:`cdc_bridge.adapters.sql_poll.diff_mode`). The run (request number, rows, estimated total,
tables left) is in the checkpoint; :meth:`SqlPollAdapter.snapshot_progress` reports it
as of the last committed batch.

Errors: connection problems become :class:`~cdc_bridge.kernel.errors.SourceUnavailable` (the
daemon restarts the adapter from its checkpoint with back-off); a missing table or
column becomes :class:`~cdc_bridge.kernel.errors.SourceSetupError` (fatal). A row whose text cannot
be decoded is a dead letter in the unit's batch (:mod:`cdc_bridge.adapters.sql_poll.badrows`); an
undecodable key or cursor value is a :class:`~cdc_bridge.kernel.errors.DecodeError` (fatal).
:meth:`SqlPollAdapter.lag` (``seconds``) is the age of the oldest table's last completed
poll; the daemon publishes it as ``cdc_source_lag``.

Schema changes: every cursor poll and diff pass begins with the table's look check
(:meth:`~cdc_bridge.adapters.sql_poll.source.TableSource.refresh`); a read that fails
because a column went away under it looks again and, if the columns did change, runs
the unit once more. A cursor or key column gone is the table's own fatal error.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from cdc_bridge.adapters.contract import (
    ChangeBatch,
    Checkpoint,
    SnapshotReport,
    SnapshotRequestError,
)
from cdc_bridge.adapters.snapshot_where import covers, widen
from cdc_bridge.adapters.sql_poll.config import PollTable, SqlPollConfig
from cdc_bridge.adapters.sql_poll.cursor_mode import CursorTable
from cdc_bridge.adapters.sql_poll.diff_mode import DiffTable
from cdc_bridge.adapters.sql_poll.diff_state import DiffState
from cdc_bridge.adapters.sql_poll.resnapshot import Resnap, resnap_page
from cdc_bridge.adapters.sql_poll.source import TableSource, classify, create_engine
from cdc_bridge.adapters.sql_poll.values import Cursor
from cdc_bridge.kernel.errors import (
    BridgeError,
    FatalError,
    SourceSetupError,
    SourceUnavailable,
)
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter
from cdc_bridge.kernel.logfields import bind_log_fields

if TYPE_CHECKING:
    from cdc_bridge.adapters.contract import AdapterContext

_MISSING = re.compile(r"not found|doesn't exist|does not exist|no such table", re.I)
#: A read that failed because the table's columns changed under it (a column dropped,
#: InnoDB's "table definition has changed"): the columns are looked at again.
_STALE = re.compile(r"unknown column|no such column|column .{1,200} does not exist"
                    r"|definition has changed", re.I)

log = logging.getLogger("cdc_bridge.adapter.sql_poll")
T = TypeVar("T")
#: What one scheduling unit produces: events, and dead letters for undecodable rows.
Unit = tuple[list[ChangeEvent], list[DeadLetter]]
CHECKPOINT_VERSION = 2


class _Slot:
    """Scheduling state of one table."""

    def __init__(self, spec: PollTable, runner: CursorTable | DiffTable, interval_s: float):
        self.spec = spec
        self.runner = runner
        self.interval_s = interval_s
        self.next_ms = 0
        #: Cursor poll in progress: where the next page starts (``None`` = not polling).
        self.page_after: Cursor | None = None
        self.polling = False
        self.last_done_ms = int(time.time() * 1000)
        #: When the next normal poll of a cursor table is due (re-snapshot pages run
        #: while it is not).
        self.poll_due_ms = 0


class SqlPollAdapter:
    def __init__(self, config: SqlPollConfig, context: AdapterContext) -> None:
        self.name = config.name
        self.config = config
        self.context = context
        self.engine: sa.Engine | None = None
        self.state: DiffState | None = None
        self.slots: list[_Slot] = []
        self._inflight: asyncio.Future[Any] | None = None
        self._ready = asyncio.Event()
        #: The re-snapshot run: request number, rows, total, tables left (checkpointed).
        self.resnap: dict[str, Any] = {"seq": 0, "rows": 0, "total": 0, "pending": []}
        self._committed: dict[str, Any] | None = None
        #: Reached the database and capturing (see the source contract).
        self.connected = False
        self._lag: dict[str, float] = {}
        #: Tables set aside by a fatal error of their own (ident -> reason), with the
        #: checkpoint each had, kept in every checkpoint so a later run resumes them.
        self.failed: dict[str, str] = {}
        self._held: dict[str, Any] = {}
        #: Tables captured before and gone now (dropped for a reload?), looked for again.
        self._waiting: dict[str, PollTable] = {}
        self._looked_ms = 0

    @property
    def state_path(self) -> Path:
        return Path(self.context.state_dir) / "sql_poll" / f"{self.name}.db"

    # --- set-up -----------------------------------------------------------------------

    def _open(self, checkpoint: Checkpoint | None) -> None:
        cfg = self.config
        self.engine = create_engine(cfg.url)
        saved: dict[str, Any] = dict((checkpoint or {}).get("tables", {}))
        if (checkpoint or {}).get("resnap"):
            self.resnap = dict(checkpoint["resnap"])  # type: ignore[index]
        self._committed = dict(self.resnap)
        for spec in cfg.tables:
            self._open_table(spec, saved.get(spec.ident), single=len(cfg.tables) == 1)
        if not self.slots and not self._waiting:  # nothing to capture: the adapter cannot run
            raise SourceSetupError("; ".join(f"{t}: {r}" for t, r in self.failed.items()))
        log.info("%s: polling %d table(s) on %s", self.name, len(self.slots),
                 self.engine.dialect.name)

    def _open_table(self, spec: PollTable, saved: Any, single: bool) -> None:
        """Reflect one table and add its runner; a failure of its own sets it aside (or,
        a table captured before and gone now, waits for it)."""
        cfg, engine = self.config, self.engine
        assert engine is not None
        try:
            source = self._guard(lambda: TableSource(engine, spec), f"table {spec.ident!r}")
        except FatalError as e:
            if self._gone(e, saved is not None):
                if single:
                    raise SourceUnavailable(f"{self.name}: table {spec.ident!r} was captured "
                                            "before and is gone (dropped for a reload?): "
                                            "waiting for it") from None
                self._wait_for(spec, saved)
                return
            if single:
                raise
            self._set_aside(spec.ident, e, saved)
            return
        batch = spec.batch_size or cfg.batch_size
        interval = spec.poll_interval if spec.poll_interval is not None else cfg.poll_interval
        runner: CursorTable | DiffTable
        if source.mode == "diff":
            if self.state is None:
                self.state = DiffState(self.state_path)
            runner = DiffTable(self.name, source, self.state, batch_size=batch,
                               progress_interval_s=cfg.progress_interval)
        else:
            lag = spec.lag_window if spec.lag_window is not None else cfg.lag_window
            runner = CursorTable(self.name, source, batch_size=batch, lag_s=lag,
                                 max_window_rows=cfg.max_window_rows,
                                 progress_interval_s=cfg.progress_interval)
        runner.load(saved)
        self.slots.append(_Slot(spec, runner, interval))
        if self._waiting.pop(spec.ident, None) is not None:
            self.failed.pop(spec.ident, None)
            self._held.pop(spec.ident, None)
            log.warning("%s: table %r is back", self.name, spec.ident)

    def _gone(self, error: BaseException, captured_before: bool) -> bool:
        """A table captured before that does not exist now was most likely dropped to be
        created again (a nightly reload): wait for it, then the reset check sends its
        ``t`` and its rows. A table never seen is a configuration error."""
        return (captured_before and self.config.on_table_change == "resnapshot"
                and _MISSING.search(str(error)) is not None)

    def _wait_for(self, spec: PollTable, saved: Any) -> None:
        if spec.ident not in self._waiting:
            log.warning("%s: table %r was captured before and is gone (dropped for a "
                        "reload?): the other tables go on; it is looked for again every "
                        "poll", self.name, spec.ident)
        self._waiting[spec.ident] = spec
        self.failed[spec.ident] = "gone (dropped?): waiting for it to come back"
        if saved is not None:
            self._held[spec.ident] = saved

    def _look_for_waiting(self) -> None:
        """Blocking: try the tables that were gone again."""
        for ident, spec in list(self._waiting.items()):
            self._open_table(spec, self._held.get(ident), single=False)

    def _set_aside(self, ident: str, error: BaseException, saved: Any) -> None:
        """One table failed for a reason waiting will not fix: stop polling it, say so
        (log, ``failed_tables()`` for status and metrics), keep its checkpoint, and let
        the other tables flow. A restart of the adapter or the daemon tries it again."""
        self.failed[ident] = str(error)
        if saved is not None:
            self._held[ident] = saved
        log.error("%s: table %r set aside, the other tables go on: %s", self.name, ident,
                  error)

    def failed_tables(self) -> dict[str, str]:
        return dict(self.failed)

    def _guard(self, fn: Callable[[], T], what: str) -> T:
        try:
            return fn()
        except BridgeError:
            raise
        except (SQLAlchemyError, OSError) as e:
            raise classify(e, f"{self.name}: {what}") from None

    # --- the loop ---------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        return {"v": CHECKPOINT_VERSION,
                "tables": {**self._held,
                           **{s.spec.ident: s.runner.dump() for s in self.slots}},
                "resnap": dict(self.resnap)}

    async def changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        await self._in_thread(lambda: self._open(checkpoint))
        self._ready.set()
        self.connected = True
        committed = self.checkpoint()
        while True:
            now_ms = int(time.time() * 1000)
            due = [s for s in self.slots if s.next_ms <= now_ms]
            for slot in due:
                try:
                    events, dead = await self._in_thread(
                        lambda s=slot: self._unit(s))  # type: ignore[misc]
                except FatalError as e:
                    gone = self._gone(e, True)
                    if len(self.slots) == 1 and not self._waiting:
                        if gone:
                            raise SourceUnavailable(f"{self.name}: table "
                                                    f"{slot.spec.ident!r} is gone: waiting "
                                                    "for it") from None
                        raise
                    self.slots.remove(slot)
                    if gone:
                        self._wait_for(slot.spec, slot.runner.dump())
                    else:
                        self._set_aside(slot.spec.ident, e, slot.runner.dump())
                    continue
                self._note_resnap(slot, events)
                current = self.checkpoint()
                if events or dead or current != committed:
                    committed = current
                    yield ChangeBatch(events, current, dead)
            self._update_lag()
            if self._waiting and now_ms - self._looked_ms >= self.config.poll_interval * 1000:
                self._looked_ms = now_ms
                await self._in_thread(self._look_for_waiting)
            if not self.slots:
                await asyncio.sleep(min(self.config.poll_interval, 1.0))
            elif not due or all(s.next_ms > int(time.time() * 1000) for s in self.slots):
                wake_ms = min(s.next_ms for s in self.slots)
                delay = (wake_ms - int(time.time() * 1000)) / 1000
                await asyncio.sleep(min(max(delay, 0.0), 1.0))

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        """Run blocking work in a thread; if we are cancelled it still finishes before
        :meth:`close` releases the connections and the state file it uses."""
        # in the caller's context, as asyncio.to_thread does: its log fields go along
        fut = asyncio.get_running_loop().run_in_executor(None, contextvars.copy_context().run,
                                                         fn)
        self._inflight = fut
        return await asyncio.shield(fut)

    def _unit(self, slot: _Slot) -> Unit:
        """One page or one diff step of ``slot``'s table (blocking): events, dead letters."""
        assert self.engine is not None
        bind_log_fields(table=slot.spec.ident)  # (this run's own copy of the context)
        what = f"polling table {slot.spec.ident!r}"
        try:
            try:
                return self._unit_once(slot)
            except DBAPIError as e:
                text = str(e.orig or e)
                if not _STALE.search(text) or not (self._refreshed(slot) or
                                                   "definition has changed" in text):
                    raise
                # its columns changed between the poll's catalogue look and this read
                return self._unit_once(slot)
        except BridgeError:
            raise
        except (SQLAlchemyError, OSError) as e:
            raise classify(e, f"{self.name}: {what}") from None

    def _unit_once(self, slot: _Slot) -> Unit:
        assert self.engine is not None
        with self.engine.connect() as conn:
            if isinstance(slot.runner, DiffTable):
                return self._diff_unit(slot, slot.runner, conn)
            return self._cursor_unit(slot, slot.runner, conn)

    def _refreshed(self, slot: _Slot) -> bool:
        """A read failed as if the table's columns changed: look again (True: they did,
        the table is rebuilt and the unit may be read again)."""
        assert self.engine is not None
        with self.engine.connect() as conn:
            return slot.runner.source.refresh(conn)

    def _cursor_unit(self, slot: _Slot, runner: CursorTable, conn: sa.Connection) -> Unit:
        now_ms = int(time.time() * 1000)
        if runner.resnap is not None and not slot.polling and now_ms < slot.poll_due_ms:
            events, dead, complete = resnap_page(self.name, runner.source, runner.resnap,
                                                 runner.batch_size, conn, now_ms)
            if complete:
                log.info("%s/%s: re-snapshot %d done: %d rows", self.name, slot.spec.ident,
                         runner.resnap.seq, runner.resnap.done)
                runner.resnap = None
            slot.next_ms = 0 if runner.resnap is not None else slot.poll_due_ms
            return events, dead
        if not slot.polling:
            reset = runner.reset_check(conn, self.config.on_table_change)
            if reset:  # re-created: its t now, its rows from the next unit (snapshot)
                slot.next_ms = 0
                return reset, []
            runner.source.refresh(conn)  # one catalogue query per poll: columns changed?
            slot.page_after = runner.begin_poll(conn, now_ms)
            slot.polling = True
            slot.poll_started_ms = now_ms  # type: ignore[attr-defined]
        page = runner.page(conn, slot.page_after, now_ms)
        slot.page_after = page.last
        if not page.full:
            slot.polling = False
            slot.last_done_ms = slot.poll_started_ms  # type: ignore[attr-defined]
            slot.next_ms = slot.poll_due_ms = now_ms + int(slot.interval_s * 1000)
            if runner.resnap is not None:
                slot.next_ms = 0
        return page.events, page.dead_letters

    def _diff_unit(self, slot: _Slot, runner: DiffTable, conn: sa.Connection) -> Unit:
        now_ms = int(time.time() * 1000)
        if runner.phase == "idle" and runner.due_ms(slot.interval_s) > now_ms:
            slot.next_ms = runner.due_ms(slot.interval_s)
            return [], []
        if runner.phase == "idle":
            slot.poll_started_ms = now_ms  # type: ignore[attr-defined]
            runner.source.refresh(conn)  # one catalogue query per pass: columns changed?
        events, dead = runner.step_once(conn, now_ms)
        if runner.phase == "idle":
            slot.last_done_ms = getattr(slot, "poll_started_ms", now_ms)
            slot.next_ms = runner.due_ms(slot.interval_s)
        return events, dead

    def _update_lag(self) -> None:
        if self.slots:
            oldest = min(s.last_done_ms for s in self.slots)
            self._lag["seconds"] = max(0.0, time.time() - oldest / 1000)

    def lag(self) -> dict[str, float]:
        """Seconds since the start of the oldest table's last completed poll."""
        return dict(self._lag)

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None and checkpoint.get("resnap"):
            self._committed = dict(checkpoint["resnap"])

    # --- re-snapshots -----------------------------------------------------------------

    #: Partial backfills (:class:`~cdc_bridge.adapters.contract.SupportsPartialSnapshot`).
    partial_snapshots = True

    async def request_snapshot(self, tables: list[str] | None, where: str | None = None
                               ) -> None:
        """Re-read ``tables`` (all when ``None``) and emit every current row as ``r`` (only
        the rows matching ``where`` when given: a partial backfill)."""
        try:
            await asyncio.wait_for(self._ready.wait(), 60.0)
        except TimeoutError:
            raise SnapshotRequestError(f"adapter {self.name} is not polling yet") from None
        by_name = {s.spec.ident: s for s in self.slots}
        chosen: list[_Slot] = []
        for t in tables or list(by_name):
            slot = by_name.get(t) or next(
                (s for s in self.slots if t in (s.spec.name, s.spec.name.rpartition(".")[2])),
                None)
            if slot is None:
                raise SnapshotRequestError(
                    f"table {t!r} is not polled by adapter {self.name} (tables: "
                    f"{', '.join(by_name)})")
            if slot not in chosen:
                chosen.append(slot)
        total = await asyncio.to_thread(self._count, chosen, where)
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])  # a unit in a thread may move a runner
        run = self.resnap
        if not run["pending"]:
            run.update(rows=0, total=0)
        run["seq"] += 1
        run["total"] += total
        for slot in chosen:
            if slot.spec.ident not in run["pending"]:
                run["pending"].append(slot.spec.ident)
            runner = slot.runner
            if isinstance(runner, DiffTable):
                queued = runner.full_pending is not None
                runner.where_pending = widen(runner.where_pending, where) if queued else where
                runner.full_pending = run["seq"]
            elif runner.resnap is None:
                runner.resnap = Resnap(run["seq"], where=where)
            elif not covers(runner.resnap.where, where):  # read again, the wider rows
                runner.resnap = Resnap(run["seq"], where=widen(runner.resnap.where, where))
            slot.next_ms = 0
        log.info("%s: re-snapshot %d requested: %s%s (about %d rows)", self.name, run["seq"],
                 ", ".join(s.spec.ident for s in chosen),
                 "" if where is None else f" where {where}", total)

    def _count(self, slots: list[_Slot], where: str | None = None) -> int:
        """Rows to read (blocking); a ``where`` is checked first, by each table's
        columns and by the database (:class:`SnapshotRequestError`)."""
        assert self.engine is not None
        try:
            with self.engine.connect() as conn:
                total = 0
                for s in slots:
                    source = s.runner.source
                    try:
                        only = source.where_clause(where)
                        if only is not None:
                            source.check_where(conn, only)
                    except ValueError as e:
                        raise SnapshotRequestError(f"adapter {self.name}: --where: {e}"
                                                   ) from None
                    except DBAPIError as e:
                        if isinstance(e, OperationalError):
                            raise
                        raise SnapshotRequestError(
                            f"--where {where}: table {s.spec.ident}: "
                            f"{str(e.orig or e).strip().splitlines()[0]}") from None
                    total += source.count(conn, only)
                return total
        except (SQLAlchemyError, OSError) as e:
            raise classify(e, f"{self.name}: counting rows to re-snapshot") from None

    def _note_resnap(self, slot: _Slot, events: list[ChangeEvent]) -> None:
        run = self.resnap
        if slot.spec.ident not in run["pending"]:
            return
        run["rows"] += sum(1 for e in events if e.op == "r" and
                           "resnapshot" in (e.source_extra or {}))
        runner = slot.runner
        busy = (runner.full is not None or runner.full_pending is not None
                if isinstance(runner, DiffTable) else runner.resnap is not None)
        if not busy:
            run["pending"] = [t for t in run["pending"] if t != slot.spec.ident]
            if not run["pending"]:
                log.info("%s: re-snapshot %d done: %d rows", self.name, run["seq"],
                         run["rows"])

    def snapshot_progress(self) -> SnapshotReport | None:
        if not self._ready.is_set() or self._committed is None:
            return None
        done = self._committed
        return SnapshotReport(int(self.resnap["seq"]), int(done["seq"]), int(done["rows"]),
                              int(done["total"]), not done["pending"])

    async def close(self) -> None:
        self.connected = False
        if self._inflight is not None and not self._inflight.done():
            await asyncio.wait([self._inflight])
        if self.engine is not None:
            await asyncio.to_thread(self.engine.dispose)
        if self.state is not None:
            self.state.close()
