"""Daemon side of on-demand re-snapshots, and the per-adapter live state they watch.

A ``snapshot`` request (from ``cdc-bridge snapshot`` or ``POST /snapshot``, through
:mod:`cdc_bridge.daemon.control`) is handled by :class:`SnapshotRunner`:

1. wait (bounded) until the adapter is running, so the request reaches a live instance;
2. refuse with a clear message if the adapter type does not implement
   :class:`cdc_bridge.adapters.contract.SupportsSnapshot`;
3. call ``request_snapshot(tables)`` (with ``where=`` for a partial backfill, refused
   clearly by an adapter without :class:`~cdc_bridge.adapters.contract.
   SupportsPartialSnapshot`); the adapter then emits ``op: r`` events through
   its normal ``changes`` stream, so they pass through the outbox like everything else;
4. report progress: the number of ``op: r`` events for those tables committed since
   the request was accepted, written to the request row for the CLI's progress bar;
5. finish ``done`` once ``request_snapshot`` has returned and no new ``op: r`` event has
   been committed for ``quiet_s`` (the protocol has no end-of-snapshot marker, so a
   quiet period stands in for one; an adapter whose ``request_snapshot`` only returns
   when its snapshot is complete makes this exact).

Adapters that track their re-snapshots durably (``postgres``, ``sql_poll``) also
implement :class:`ReportsSnapshotProgress`: ``snapshot_progress()`` says which request
numbers they took and which run their *committed* checkpoint has finished, with rows
done and an estimated total. Steps 4-5 then follow that report instead of the quiet
period: progress is ``rows/total``, ``done`` is exact (committed), and a request lost
by an adapter restart before it was committed is handed to the new instance again. A
request refused by the adapter (:class:`SnapshotRequestError`, e.g. a table that is not
captured) fails with the adapter's message. Requests such an adapter was running when
the daemon stopped go back to ``pending``, and requests left ``running`` by a daemon
that died (``kill -9``) are queued again on start, so the CLI following one sees it
finish once the daemon is back (the adapter resumes the run from its checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge.adapters.contract import (
    Adapter,
    ReportsSnapshotProgress,
    SupportsPartialSnapshot,
    SupportsSnapshot,
)
from cdc_bridge.daemon.control import DONE, FAILED, PENDING, ControlDb, Request
from cdc_bridge.kernel.errors import SnapshotRequestError

log = logging.getLogger("cdc_bridge.snapshot")


async def _ask(adapter: SupportsSnapshot, req: Request) -> None:
    """Hand ``req`` to the adapter: with its ``where`` (a partial backfill) when it has one."""
    if req.where is not None:
        assert isinstance(adapter, SupportsPartialSnapshot)
        await adapter.request_snapshot(req.tables, where=req.where)
    else:
        await adapter.request_snapshot(req.tables)


@dataclass(slots=True)
class AdapterStats:
    """What the daemon knows about one adapter, live."""

    type: str
    state: str = "starting"
    batches: int = 0
    events: int = 0
    dead_letters: int = 0
    restarts: int = 0
    last_error: str | None = None
    last_batch_ms: int | None = None
    #: ``op: r`` events committed so far, per table (``schema.table`` or ``table``).
    snapshot_reads: dict[str, int] = field(default_factory=dict)
    #: The live adapter instance while one runs (snapshot requests, readiness, lag).
    adapter: Adapter | None = None
    #: The adapter's last reported lag, by unit (kept while it restarts).
    lag: dict[str, float] = field(default_factory=dict)
    #: Tables the adapter set aside, with the reason (``ReportsTableHealth``).
    failed_tables: dict[str, str] = field(default_factory=dict)

    def as_dict(self, lag: dict[str, float]) -> dict[str, Any]:
        return {"type": self.type, "state": self.state, "batches": self.batches,
                "events": self.events, "dead_letters": self.dead_letters,
                "restarts": self.restarts, "last_error": self.last_error,
                "last_batch_ms": self.last_batch_ms, "lag": lag,
                "failed_tables": dict(self.failed_tables)}

    def reads(self, tables: list[str] | None) -> int:
        if not tables:
            return sum(self.snapshot_reads.values())
        return sum(n for t, n in self.snapshot_reads.items()
                   if t in tables or t.rpartition(".")[2] in tables)


class SnapshotRunner:
    def __init__(self, adapters: dict[str, AdapterStats], control: ControlDb, *,
                 quiet_s: float = 2.0, wait_running_s: float = 60.0,
                 interval_s: float = 0.25,
                 redact: Callable[[str], str] = lambda text: text) -> None:
        self.adapters = adapters
        #: Applied to every message stored for a request (an adapter's error may hold a
        #: password): ``snapshot``, ``GET /requests/{id}`` and the status page show them.
        self.redact = redact
        self.control = control
        self.quiet_s = quiet_s
        self.wait_running_s = wait_running_s
        self.interval_s = interval_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._durable: set[int] = set()
        try:  # requests a killed daemon left running: its adapters resume them
            for rid in control.requeue_running():
                log.info("snapshot request %d was running when the daemon stopped: "
                         "queued again", rid)
        except Exception as e:  # the control file must never take the daemon down
            log.warning("control channel: %s", e)

    def start(self, req: Request) -> None:
        task = asyncio.create_task(self._handle(req), name=f"snapshot-{req.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _finish(self, req: Request, status: str, message: str, events: int = 0) -> None:
        message = self.redact(message)
        log.info("snapshot request %d (%s %s): %s: %s", req.id, req.adapter,
                 ",".join(req.tables or ["all tables"]), status, message)
        await asyncio.to_thread(self.control.update, req.id, status=status, events=events,
                                message=message)

    async def _handle(self, req: Request) -> None:
        try:
            await self._run(req)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                if req.id in self._durable:
                    self.control.update(req.id, status=PENDING, message="the daemon stopped; "
                                        "the snapshot resumes when it restarts")
                else:
                    self.control.update(req.id, status=FAILED, message="the daemon stopped "
                                        "before the snapshot finished")
            raise
        except SnapshotRequestError as e:
            await self._finish(req, FAILED, str(e))
        except Exception as e:
            await self._finish(req, FAILED, f"{type(e).__name__}: {e}")

    async def _run(self, req: Request) -> None:
        if req.kind != "snapshot":
            await self._finish(req, FAILED, f"unknown request kind {req.kind!r}")
            return
        stats = self.adapters.get(req.adapter)
        if stats is None:
            known = ", ".join(sorted(self.adapters)) or "none"
            await self._finish(req, FAILED, f"no adapter named {req.adapter!r} (known: {known})")
            return
        deadline = time.monotonic() + self.wait_running_s
        while stats.adapter is None or stats.state not in ("running", "starting"):
            if time.monotonic() > deadline:
                await self._finish(req, FAILED, f"adapter {req.adapter} is not running "
                                   f"(state {stats.state}) after {self.wait_running_s:.0f}s")
                return
            await asyncio.sleep(self.interval_s)
        adapter = stats.adapter
        if not isinstance(adapter, SupportsSnapshot):
            await self._finish(req, FAILED, f"snapshot is not supported by this adapter type "
                               f"({stats.type})")
            return
        if req.where is not None and not isinstance(adapter, SupportsPartialSnapshot):
            await self._finish(req, FAILED, f"a partial snapshot (--where) is not supported "
                               f"by this adapter type ({stats.type})")
            return
        log.info("snapshot request %d: asking adapter %s to re-snapshot %s%s", req.id,
                 req.adapter, ",".join(req.tables or ["all tables"]),
                 "" if req.where is None else f" where {req.where}")
        base = stats.reads(req.tables)
        await _ask(adapter, req)
        if isinstance(adapter, ReportsSnapshotProgress):
            self._durable.add(req.id)
            report = adapter.snapshot_progress()
            await self._follow(req, stats, report.requested if report else 0)
            return
        await self._watch(req, stats, base)

    async def _follow(self, req: Request, stats: AdapterStats, target: int) -> None:
        """Progress and completion from the adapter's own (committed) report."""
        shown: tuple[int, int] | None = None
        while True:
            adapter = stats.adapter
            report = (adapter.snapshot_progress()
                      if isinstance(adapter, ReportsSnapshotProgress) else None)
            if report is not None and report.requested < target:
                # a restarted adapter never committed the request: hand it over again
                log.info("snapshot request %d: adapter %s restarted before committing it; "
                         "asking again", req.id, req.adapter)
                await _ask(adapter, req)
                again = adapter.snapshot_progress()
                target = again.requested if again else target
            elif report is not None and report.committed >= target and report.done:
                await self._finish(req, DONE, f"{report.rows} rows read", report.rows)
                return
            elif report is not None and report.committed >= target and (
                    report.rows, report.total) != shown:
                shown = (report.rows, report.total)
                total = max(report.total, report.rows)
                await asyncio.to_thread(self.control.update, req.id, events=report.rows,
                                        message=f"{report.rows}/{total} rows")
            await asyncio.sleep(self.interval_s)

    async def _watch(self, req: Request, stats: AdapterStats, base: int) -> None:
        last, quiet_since = -1, time.monotonic()
        while True:
            done = stats.reads(req.tables) - base
            if done != last:
                last, quiet_since = done, time.monotonic()
                await asyncio.to_thread(self.control.update, req.id, events=done)
            elif time.monotonic() - quiet_since >= self.quiet_s:
                await self._finish(req, DONE, f"{done} rows read", done)
                return
            await asyncio.sleep(self.interval_s)
