"""Group mode: several daemons on one PostgreSQL outbox share the adapters and the relay.

Each daemon is a *member* (docs/group.md). Every ``renew_every`` it runs one round
(:mod:`cdc_bridge.daemon.group_plan` decides, this module does the I/O):

1. heartbeat its row in ``members`` (expiry ``lease`` ahead, by the database clock);
2. read members and leases; the live members give the assignment;
3. stop the work whose lease it lost, renew the leases of the work it runs, hand over
   what is now assigned to another live member (the work stops gracefully: a batch
   being committed is committed, the source is closed; then the lease is released),
   and acquire what is assigned to it and free or expired, starting that work with
   the lease's :class:`cdc_bridge.outbox.fence.Fence`.

The work itself (an adapter's capture, the relay) writes only with its fence, so a
member that lost a lease without knowing it (paused, cut off) commits nothing: its
write raises :class:`cdc_bridge.outbox.fence.LeaseLost`, the work stops, is logged,
and the member carries on with its next round (it "rejoins"). A member that cannot
reach the database for a whole lease stops all its work on its own as well, by its
monotonic clock, measured from the start of its last successful round.

On a clean stop (:meth:`GroupMember.leave`) the member stops its work, releases its
leases and deletes its row, so the others take over at their next round instead of
after the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cdc_bridge import metrics
from cdc_bridge.daemon.group_plan import assign, plan_round
from cdc_bridge.kernel.errors import FatalError
from cdc_bridge.outbox.base import StoreUnavailable
from cdc_bridge.outbox.fence import RELAY_RESOURCE, Fence, LeaseLost
from cdc_bridge.outbox.leases import GroupRows, LeaseDb, outbox_application_name

log = logging.getLogger("cdc_bridge.group")
_T = TypeVar("_T")


def default_member_id() -> str:
    """``<host>-<random>``: unique per process, readable in ``status``."""
    return f"{socket.gethostname()}-{os.urandom(3).hex()}"


@dataclass(frozen=True, slots=True)
class Work:
    """How to run one resource: ``run(fence)`` until cancelled; ``stop(task)`` stops it
    gracefully (default: cancel and wait)."""

    run: Callable[[Fence], Awaitable[None]]
    stop: Callable[[asyncio.Task[None]], Awaitable[None]] | None = None


@dataclass(slots=True)
class _Running:
    fence: Fence
    task: asyncio.Task[None]
    lost: str | None = None
    #: Being handed over: stopping in the background, still renewed until released.
    handover: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class GroupSettings:
    member_id: str
    lease_s: float
    renew_every_s: float


@dataclass(slots=True)
class _Seen:
    """The last round's view, for ``status`` and metrics."""

    rows: GroupRows | None = None
    assignment: dict[str, str] = field(default_factory=dict)
    at: float = 0.0


class GroupMember:
    """One daemon's membership: rounds, the work it runs, and its view for status."""

    def __init__(self, url: str, settings: GroupSettings, work: dict[str, Work]) -> None:
        self.settings = settings
        self.me = settings.member_id
        self.work = work
        self._url = url
        self.db = LeaseDb(url, application_name=self._app)
        self.token = os.urandom(8).hex()
        self.running: dict[str, _Running] = {}
        self.seen = _Seen()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="group")
        self._wake = asyncio.Event()
        self._valid_until = 0.0
        self._down_logged = False
        self._in_use_logged = False

    # -- database calls on the group's own thread, bounded in time ----------------------

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(future, self.settings.lease_s / 2)
        except TimeoutError:
            # a call stuck on a dead network path: leave its thread behind, start afresh
            self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="group")
            self.db = LeaseDb(self._url, application_name=self._app)
            raise StoreUnavailable("outbox database did not answer in time") from None

    @property
    def _app(self) -> str:
        return f"cdc-bridge group {self.me}"[:63]

    # -- lifecycle --------------------------------------------------------------------

    async def join(self) -> None:
        """Create the tables (waiting while the database is down)."""
        while True:
            try:
                await self._call(self.db.ensure)
                break
            except StoreUnavailable as e:
                log.warning("group: waiting for the outbox database: %s", e)
                await asyncio.sleep(self.settings.renew_every_s)
        log.info("group: member %s joining (lease %.1fs, renew every %.1fs)", self.me,
                 self.settings.lease_s, self.settings.renew_every_s)

    async def run(self) -> None:
        """Rounds until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self._round(started)
                if self._down_logged:
                    log.info("group: outbox database reachable again")
                self._down_logged = False
            except StoreUnavailable as e:
                if not self._down_logged:
                    log.warning("group: round failed: %s", e)
                self._down_logged = True
            if self.running and time.monotonic() > self._valid_until:
                log.warning("group: no lease renewed for %.1fs: stopping all work here",
                            self.settings.lease_s)
                for resource in list(self.running):
                    await self._stop(resource, graceful=False)
            self._publish_metrics()
            self._wake.clear()
            delay = max(0.0, self.settings.renew_every_s - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _round(self, started: float) -> None:
        lease = self.settings.lease_s
        self._reap()
        ok = await self._call(self.db.heartbeat, self.me, self.token, socket.gethostname(),
                              os.getpid(), lease)
        if not ok:
            if not self._in_use_logged:
                log.warning("group: member id %s has a live heartbeat from another process "
                            "(this member's previous process, killed less than a lease ago, "
                            "or another daemon with the same group.member_id): waiting "
                            "until it expires", self.me)
            self._in_use_logged = True
            return
        self._in_use_logged = False
        rows = await self._call(self.db.rows)
        live = [m.member_id for m in rows.members if m.live]
        await self._end_sessions_of_gone(rows)
        assignment = assign(self.work, live)
        plan = plan_round(self.me, {r: h.fence for r, h in self.running.items()},
                          rows.leases, assignment, live)
        self.seen = _Seen(rows, assignment, time.time())
        for fence in plan.lost:
            row = next((x for x in rows.leases if x.resource == fence.resource), None)
            log.warning("group: lost %s (now owner %s, epoch %s): stopping it here",
                        fence.describe(), row.owner if row else None,
                        row.epoch if row else None)
            await self._stop(fence.resource, graceful=False)
        for fence in plan.renew:
            if not await self._call(self.db.renew, fence, lease):
                log.warning("group: could not renew %s: stopping it here", fence.describe())
                await self._stop(fence.resource, graceful=False)
        # what still runs was renewed (or acquired) after ``started``
        self._valid_until = started + lease
        for fence in plan.handover:
            held = self.running[fence.resource]
            if held.handover is None:
                log.info("group: handing %s over to %s", fence.describe(),
                         assignment.get(fence.resource))
                held.handover = asyncio.create_task(self._hand_over(fence),
                                                    name=f"handover-{fence.resource}")
        for resource in plan.acquire:
            epoch = await self._call(self.db.acquire, resource, self.me, lease)
            if epoch is not None:
                self._start(resource, Fence(resource, self.me, epoch))

    async def _end_sessions_of_gone(self, rows: GroupRows) -> None:
        """End the outbox sessions of expired members (see ``LeaseDb.end_sessions``)."""
        gone = [m.member_id for m in rows.members if not m.live and m.member_id != self.me]
        if not gone:
            return
        ended = await self._call(self.db.end_sessions,
                                 [outbox_application_name(m) for m in gone])
        if ended:
            log.warning("group: ended %d outbox session(s) left by member(s) %s, gone "
                        "(expired)", ended, ", ".join(gone))

    async def _hand_over(self, fence: Fence) -> None:
        """Stop the work gracefully (its last batch committed, the source closed) while
        the rounds keep renewing the lease, then release it for the new owner."""
        started = time.monotonic()
        held = self.running.get(fence.resource)
        stop = self.work[fence.resource].stop
        if held is not None and stop is not None and not held.task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop(held.task), self.settings.lease_s)
        if held is not None:
            await _cancel(held.task)
        if self.running.get(fence.resource) is held:
            del self.running[fence.resource]
        try:
            released = await self._call(self.db.release, fence)
        except StoreUnavailable:
            released = False
        log.info("group: handed %s over in %.1fs%s", fence.describe(),
                 time.monotonic() - started, "" if released else
                 " (not released: it expires by itself)")
        self._wake.set()

    def _reap(self) -> None:
        """Forget work that ended because its lease was lost (its write was refused)."""
        for resource, held in list(self.running.items()):
            if held.task.done() and held.lost is not None:
                log.warning("group: %s: %s; rejoining", resource, held.lost)
                del self.running[resource]

    def _start(self, resource: str, fence: Fence) -> None:
        log.info("group: acquired %s: starting it", fence.describe())
        task = asyncio.create_task(self._guarded(resource, fence), name=f"group-{resource}")
        self.running[resource] = _Running(fence, task)

    async def _guarded(self, resource: str, fence: Fence) -> None:
        try:
            await self.work[resource].run(fence)
        except LeaseLost as e:
            held = self.running.get(resource)
            if held is not None:
                held.lost = f"lost the lease ({e})"
            log.warning("group: %s: lost the lease: %s", resource, e)
            self._wake.set()

    async def _stop(self, resource: str, *, graceful: bool) -> None:
        held = self.running.pop(resource, None)
        if held is None:
            return
        if held.handover is not None:
            held.handover.cancel()
            await asyncio.gather(held.handover, return_exceptions=True)
        stop = self.work[resource].stop
        if graceful and stop is not None and not held.task.done():
            await stop(held.task)
        result = await _cancel(held.task)
        if isinstance(result, FatalError) and not isinstance(result, LeaseLost):
            raise result
        log.info("group: stopped %s", held.fence.describe())

    async def leave(self) -> None:
        """Stop all work gracefully (adapters first, the relay last, so it publishes
        what they committed), release every lease, delete the member row."""
        for resource in sorted(self.running, key=lambda r: (r == RELAY_RESOURCE, r)):
            fence = self.running[resource].fence
            await self._stop(resource, graceful=True)
            with contextlib.suppress(StoreUnavailable, OSError):
                await self._call(self.db.release, fence)
        with contextlib.suppress(StoreUnavailable, OSError):
            await self._call(self.db.leave, self.me, self.token)
        await asyncio.get_running_loop().run_in_executor(self._pool, self.db.close)
        self._pool.shutdown(wait=False)
        log.info("group: member %s left", self.me)

    # -- visibility -------------------------------------------------------------------

    def owns(self, resource: str) -> bool:
        return resource in self.running

    async def holds(self, fence: Fence) -> bool:
        """Asked by the database: is ``fence`` still valid now?"""
        return await self._call(self.db.holds, fence)

    def snapshot(self) -> dict[str, Any]:
        """Members, leases and this member's work, for ``status`` and ``/status``."""
        rows = self.seen.rows
        view = rows.as_dict() if rows is not None else {"members": [], "leases": []}
        for lease in view["leases"]:
            lease["assigned_to"] = self.seen.assignment.get(lease["resource"])
        return {"member_id": self.me, "lease_s": self.settings.lease_s,
                "renew_every_s": self.settings.renew_every_s, **view,
                "mine": sorted(self.running)}

    def _publish_metrics(self) -> None:
        rows = self.seen.rows
        if rows is None:
            return
        metrics.GROUP_MEMBERS.set(sum(1 for m in rows.members if m.live))
        for r in rows.leases:
            metrics.GROUP_LEASE_EPOCH.labels(r.resource).set(r.epoch)
            if r.acquired_age_s is not None:
                metrics.GROUP_LEASE_AGE.labels(r.resource).set(r.acquired_age_s)
            metrics.GROUP_LEASE_HELD_HERE.labels(r.resource).set(
                1 if r.resource in self.running else 0)
            metrics.set_lease_owner(r.resource, r.owner if r.held and r.owner else "")


async def _cancel(task: asyncio.Task[None]) -> BaseException | None:
    """Cancel ``task`` until it ends (a cancellation can be swallowed by a ``wait_for``
    that meets a completion, Python 3.11), then return its exception, if any."""
    tries = 0
    while not task.done():
        if tries:
            log.info("group: %s did not end on cancellation; cancelling again",
                     task.get_name())
        tries += 1
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    return None if task.cancelled() else task.exception()
