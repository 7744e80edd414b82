"""The daemon: wires config, embedded NATS, outbox, adapters and relay, and supervises them.

Start-up: state_dir and the instance locks (:mod:`cdc_bridge.daemon.instance`: a second daemon on
the same state_dir or PostgreSQL outbox schema exits 1 here, having started nothing),
then the embedded nats-server (when ``nats.url`` is absent), the outbox store, the
relay, one supervised task per adapter, and the operations tasks (metrics refresh,
control channel, optional HTTP endpoint). Losing the schema lock to another daemon
while running is a fatal error.

Supervision (:mod:`cdc_bridge.daemon.supervisor`): each adapter task loads its checkpoint from the
store, iterates the adapter's batches, commits each batch to the outbox (events +
checkpoint in one transaction) and only then acknowledges it to the adapter. Any
failure but a :class:`cdc_bridge.kernel.errors.FatalError` restarts that adapter alone from its
last committed checkpoint with back-off (``cdc_adapter_restarts``); the others keep
running. A ``FatalError`` anywhere stops the daemon with a clear message and exit code 1.

The relay runs in a child process (:mod:`cdc_bridge.daemon.relay_process`), so that capture and
publishing each get a core instead of sharing one interpreter: the daemon starts it,
restarts it with back-off when it dies, wakes it after every commit, and mirrors its
counters and connection state for ``/metrics``, ``/readyz`` and ``/status``.

Adapter states, one log line per change: ``starting`` (created, not yet proven),
``running`` (first batch, or ``ready_grace_s`` without an error while the adapter says it
is ``connected``), ``retrying`` (failed, waiting to restart),
``finished`` (its input ended), ``stopped``. ``/readyz`` is ready when NATS is connected
and every adapter is ``running`` or ``finished``.

Group mode (``group.enabled``, :mod:`cdc_bridge.daemon.group`; docs/group.md): the
schema lock is taken in its shared form, and instead of starting every adapter and the
relay, the daemon joins the group of daemons on the same PostgreSQL outbox and runs
only what it holds a lease for, each with its fence (a write after the lease is lost
is refused: that work stops, ``standby``). Adapters owned elsewhere are ``standby``
(ready). On stop, the member hands everything back at once.

Shutdown is two-phase: stop intake (cancel adapter tasks; a batch being committed
finishes first because the commit is shielded), let the relay finish the batch in
flight and exit within ``shutdown_timeout_s`` (else it is killed; pending rows stay in
the outbox), then close everything and log a one-line summary of counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdc_bridge import metrics
from cdc_bridge.adapters.contract import (
    Adapter,
    AdapterConfig,
    ReportsSnapshotProgress,
    ReportsTableHealth,
    SupportsTakeover,
)
from cdc_bridge.adapters.registry import AdapterContext, create
from cdc_bridge.adapters.subjects import subject_router
from cdc_bridge.config import BridgeConfig
from cdc_bridge.daemon.control import DONE, FAILED, ControlDb, control_path
from cdc_bridge.daemon.embedded import EmbeddedNats
from cdc_bridge.daemon.group import GroupMember, GroupSettings, Work, default_member_id
from cdc_bridge.daemon.http import HttpServer
from cdc_bridge.daemon.instance import InstanceGuard
from cdc_bridge.daemon.jetstream_view import JetStreamView
from cdc_bridge.daemon.logs import RedactingFilter, bind_log_fields
from cdc_bridge.daemon.overview import Overview
from cdc_bridge.daemon.probe import NatsProbe
from cdc_bridge.daemon.relay_process import RelayProcess
from cdc_bridge.daemon.schemas import SchemaControl
from cdc_bridge.daemon.snapshots import AdapterStats, SnapshotRunner
from cdc_bridge.daemon.supervisor import supervise
from cdc_bridge.kernel.errors import FatalError
from cdc_bridge.outbox.factory import open_store
from cdc_bridge.outbox.fence import RELAY_RESOURCE, Fence, LeaseLost
from cdc_bridge.outbox.leases import (
    outbox_application_name,
    with_query,
    with_session_options,
)
from cdc_bridge.outbox.runner import AsyncStore
from cdc_bridge.outbox.writer import OutboxWriter
from cdc_bridge.relay.tracing import Tracing

log = logging.getLogger("cdc_bridge.daemon")

#: ``standby``: group mode, the adapter is captured by another member.
READY_STATES = frozenset({"running", "finished", "standby"})


class Daemon:
    def __init__(self, config: BridgeConfig, shutdown_timeout_s: float = 15.0,
                 ready_grace_s: float = 1.0, state_interval_s: float = 1.0) -> None:
        self.config = config
        self.shutdown_timeout_s = shutdown_timeout_s
        self.ready_grace_s = ready_grace_s
        self.state_interval_s = state_interval_s
        self.adapters: dict[str, AdapterStats] = {
            a.name: AdapterStats(a.type) for a in config.adapter_configs}
        for name in self.adapters:
            metrics.init_adapter_series(name)
        self.fatal: BaseException | None = None
        self.stop_event = asyncio.Event()
        self.started_ms = int(time.time() * 1000)
        self.embedded: EmbeddedNats | None = None
        self.store: AsyncStore | None = None
        self.relay: RelayProcess | None = None
        #: Capture and commit spans (the relay child has its own): None unless tracing on.
        self.tracing: Tracing | None = None
        self.relay_state = "starting"
        self.control = ControlDb(control_path(config.state_dir))
        self.http: HttpServer | None = None
        self.instance: InstanceGuard | None = None
        self.group: GroupMember | None = None
        #: Group mode: this daemon's member id (its outbox sessions are named after it).
        self.member_id = config.group.member_id or default_member_id()
        self.probe: NatsProbe | None = None
        self._outbox: dict[str, Any] = {}
        self._redactor = RedactingFilter(config.secrets)
        self._warned: dict[str, float] = {}
        #: The status page's view: counter history, JetStream consumers, dead letters.
        #: Schema versions, paused tables and their release (docs/schemas.md).
        self.schemas = SchemaControl(config, lambda: self.store)
        self.overview = Overview(self, self.control,
                                 JetStreamView(config.nats, self._redactor.redact),
                                 self._redactor.redact)

    def request_stop(self) -> None:
        if not self.stop_event.is_set():
            log.info("stop requested: stopping intake, draining in-flight publishes")
        self.stop_event.set()

    # -- lifecycle --------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        cfg = self.config
        make_private_dir(cfg.state_dir)
        # Before anything else: a second daemon on the same state must start nothing.
        instance = self.instance = InstanceGuard(cfg.state_dir, cfg.outbox_url(),
                                                 group=cfg.group.enabled)
        if not await self._until_stopped(instance.acquire()):
            await instance.release()
            return 0
        background: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._keep_instance_lock(), name="instance-lock")]
        nats_cfg = cfg.nats
        try:
            if nats_cfg.url is None:
                self.embedded = EmbeddedNats(nats_cfg.embedded.host, nats_cfg.embedded.port,
                                             cfg.state_dir / "nats")
                await self.embedded.start()
                background.append(asyncio.create_task(self.embedded.supervise(),
                                                      name="embedded"))
            outbox_url = self._outbox_url()
            self.store = AsyncStore(open_store(outbox_url))
            self.probe = NatsProbe(nats_cfg)
            self.tracing = Tracing.start(cfg.tracing, "capture")
            self.relay = RelayProcess(self.store, nats_cfg, cfg.outbox, outbox_url,
                                      secrets=cfg.secrets, tracing=cfg.tracing)
            if cfg.http.enabled:
                self.http = HttpServer(self, cfg.http.host, cfg.http.port, self.control,
                                       overview=self.overview.build, token=cfg.http.token)
                await self.http.start()
            context = AdapterContext(state_dir=cfg.state_dir,
                                     subject_prefix=nats_cfg.subject_prefix,
                                     store_id=self.store.store_id)
            snapshots = SnapshotRunner(self.adapters, self.control,
                                       redact=self._redactor.redact)
            if cfg.group.enabled:
                group = self.group = self._make_group(outbox_url, context)
                await group.join()
                group_task = asyncio.create_task(self._guard(group.run(), "group"),
                                                 name="group")
                background.append(group_task)
                adapter_tasks: list[asyncio.Task[Any]] = []
                relay_task: asyncio.Task[Any] | None = None
            else:
                relay_task = asyncio.create_task(self._guard(self._run_relay(), "relay"),
                                                 name="relay")
                adapter_tasks = [
                    asyncio.create_task(self._guard(self._supervise(a, context), a.name),
                                        name=a.name)
                    for a in cfg.adapter_configs
                ]
            background += [asyncio.create_task(self._refresh_loop(snapshots), name="ops")]
            log.info("cdc-bridge running: %d adapter(s), outbox %s, NATS %s%s",
                     len(cfg.adapter_configs), _store_kind(cfg.outbox_url()),
                     "embedded " + self.embedded.url if self.embedded else ",".join(
                         nats_cfg.servers()),
                     f", group member {self.group.me}" if self.group else "")
            await self.stop_event.wait()
            if self.group is not None:
                await snapshots.cancel_all()
                group_task.cancel()  # the group's rounds, then hand everything back
                await asyncio.gather(group_task, return_exceptions=True)
                await self.group.leave()
            else:
                assert relay_task is not None
                await self._shutdown(adapter_tasks, relay_task, snapshots)
        finally:
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._close()
            await instance.release()  # last: the relay child and the store are gone
        return 1 if self.fatal is not None else 0

    async def _shutdown(self, adapter_tasks: list[asyncio.Task[Any]],
                        relay_task: asyncio.Task[Any], snapshots: SnapshotRunner) -> None:
        assert self.relay is not None
        await snapshots.cancel_all()
        for t in adapter_tasks:  # phase 1: stop intake
            t.cancel()
        await asyncio.gather(*adapter_tasks, return_exceptions=True)
        self.relay.stop()  # phase 2: let the relay finish what is in flight
        try:
            await asyncio.wait_for(asyncio.shield(relay_task), self.shutdown_timeout_s)
        except TimeoutError:
            log.warning("relay did not finish within %.0fs; pending rows stay in the outbox",
                        self.shutdown_timeout_s)
            relay_task.cancel()  # kills the relay process
            await asyncio.gather(relay_task, return_exceptions=True)

    async def _close(self) -> None:
        pending = None
        if self.http is not None:
            await self.http.stop()
        if self.probe is not None:
            await self.probe.close()
        await self.overview.jetstream.close()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.control.clear_state)
        if self.store is not None:
            with contextlib.suppress(Exception):
                pending = (await self.store.stats()).pending
            self.store.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        if self.embedded is not None:
            await self.embedded.stop()
        rs = self.relay.stats if self.relay else None
        captured = sum(a.events for a in self.adapters.values())
        log.info("stopped: captured=%d published=%d duplicates=%d dead_lettered=%d pending=%s",
                 captured, rs.published if rs else 0, rs.duplicates if rs else 0,
                 rs.dead_lettered if rs else 0, pending)

    async def _guard(self, coro: Any, what: str) -> None:
        """Turn a fatal error in any task into a daemon stop with a clear message
        (a lost lease, in group mode, stops that work only)."""
        try:
            await coro
        except (asyncio.CancelledError, LeaseLost):
            raise
        except FatalError as e:
            log.error("%s: fatal: %s", what, e)
            self.fatal = e
            self.request_stop()
        except Exception as e:
            log.exception("%s: unexpected error: %s", what, e)
            self.fatal = e
            self.request_stop()

    async def _until_stopped(self, work: Any) -> bool:
        """Await ``work`` unless a stop is requested first (then cancel it: False)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()  # raises what the work raised
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False

    async def _keep_instance_lock(self) -> None:
        """Re-acquire the schema lock after a lost connection; a rival's lock is fatal."""
        assert self.instance is not None
        await self._guard(self.instance.watch(), "instance lock")

    # -- group mode -------------------------------------------------------------------

    def _outbox_url(self) -> str:
        """The outbox URL; in group mode its sessions are named after the member (so the
        others can end them once it is gone: a paused process would hold the ``seq`` row
        and its lease row) and a transaction left idle is bounded."""
        url = self.config.outbox_url()
        if not self.config.group.enabled:
            return url
        idle_ms = int(self.config.group.lease * 500)
        url = with_query(url, "application_name", outbox_application_name(self.member_id))
        return with_session_options(url, {"idle_in_transaction_session_timeout":
                                          str(idle_ms)})

    def _make_group(self, outbox_url: str, context: AdapterContext) -> GroupMember:
        g = self.config.group
        settings = GroupSettings(self.member_id, g.lease, g.renew_every)
        work = {a.name: Work(functools.partial(self._owned_adapter, a, context))
                for a in self.config.adapter_configs}
        work[RELAY_RESOURCE] = Work(self._owned_relay, self._stop_relay)
        for name, stats in self.adapters.items():
            self._set_state(name, stats, "standby")
        self.relay_state = "standby"
        return GroupMember(outbox_url, settings, work)

    async def _owned_adapter(self, cfg: AdapterConfig, context: AdapterContext,
                             fence: Fence) -> None:
        stats = self.adapters[cfg.name]
        try:
            await self._guard(self._supervise(cfg, context, fence), cfg.name)
        finally:
            self._set_state(cfg.name, stats, "standby")

    async def _owned_relay(self, fence: Fence) -> None:
        assert self.relay is not None
        self.relay.resume(fence)
        self.relay_state = "starting"
        try:
            await self._guard(self._run_relay(), "relay")
        finally:
            self.relay_state = "standby"

    async def _stop_relay(self, task: asyncio.Task[None]) -> None:
        """Hand-over: the relay finishes what is in flight (bounded), then exits."""
        assert self.relay is not None
        self.relay.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), self.shutdown_timeout_s)

    # -- relay ------------------------------------------------------------------------

    async def _run_relay(self) -> None:
        assert self.relay is not None
        relay_log = logging.getLogger("cdc_bridge.relay")

        def failed(e: BaseException) -> None:
            self.relay_state = "retrying"

        await supervise("relay process", self.relay.run_once, relay_log, on_failure=failed,
                        on_restart=lambda: metrics.ADAPTER_RESTARTS.labels("_relay").inc())

    # -- adapters ---------------------------------------------------------------------

    def _set_state(self, name: str, stats: AdapterStats, state: str,
                   error: BaseException | None = None) -> None:
        if stats.state == state and error is None:
            return
        if error is not None:
            stats.last_error = self._redactor.redact(f"{type(error).__name__}: {error}")
            log.warning("adapter %s: %s -> %s (%s)", name, stats.state, state, stats.last_error)
        else:
            log.info("adapter %s: %s -> %s", name, stats.state, state)
        stats.state = state
        self._adapter_metrics(name, stats)

    @staticmethod
    def _table_health(name: str, stats: AdapterStats, failed: dict[str, str]) -> None:
        for table in stats.failed_tables.keys() - failed.keys():
            metrics.TABLE_FAILED.labels(name, table).set(0)
        for table in failed:
            metrics.TABLE_FAILED.labels(name, table).set(1)
        stats.failed_tables = failed

    @staticmethod
    def _adapter_metrics(name: str, stats: AdapterStats) -> None:
        """The one writer of ``cdc_adapter_up`` and ``cdc_source_lag``, from what the
        adapter declares (``connected``, ``lag()``; see the source contract)."""
        adapter = stats.adapter
        up = False
        if adapter is not None:
            try:
                stats.lag = adapter.lag()
                up = stats.state == "running" and adapter.connected
                if isinstance(adapter, ReportsTableHealth):
                    Daemon._table_health(name, stats, adapter.failed_tables())
                if isinstance(adapter, ReportsSnapshotProgress):
                    report = adapter.snapshot_progress()
                    if report is not None and report.committed:
                        metrics.SNAPSHOT_ROWS_DONE.labels(name).set(report.rows)
                        metrics.SNAPSHOT_ROWS_TOTAL.labels(name).set(
                            max(report.total, report.rows))
            except Exception as e:  # a source's report must never take the daemon down
                log.debug("adapter %s: lag/readiness report failed: %s", name, e)
        metrics.ADAPTER_UP.labels(name).set(1 if up else 0)
        for unit, value in stats.lag.items():
            gauge = metrics.SOURCE_LAG.get(unit)
            if gauge is not None:
                gauge.labels(name).set(value)

    async def _supervise(self, cfg: AdapterConfig, context: AdapterContext,
                         fence: Fence | None = None) -> None:
        stats = self.adapters[cfg.name]
        bind_log_fields(adapter=cfg.name)  # every line this task and its threads log
        adapter_log = logging.getLogger(f"cdc_bridge.adapter.{cfg.name}")

        def failed(e: BaseException) -> None:
            self._set_state(cfg.name, stats, "retrying", e)

        def restarted() -> None:
            stats.restarts += 1
            metrics.ADAPTER_RESTARTS.labels(cfg.name).inc()

        try:
            await supervise(f"adapter {cfg.name}",
                            lambda: self._capture(cfg, context, stats, fence),
                            adapter_log, on_failure=failed, on_restart=restarted,
                            progress=lambda: stats.batches)
            self._set_state(cfg.name, stats, "finished")
        except asyncio.CancelledError:
            self._set_state(cfg.name, stats, "stopped")
            raise
        except LeaseLost:
            raise
        except FatalError as e:
            self._set_state(cfg.name, stats, "failed", e)
            raise

    async def _capture(self, cfg: AdapterConfig, context: AdapterContext,
                       stats: AdapterStats, fence: Fence | None = None) -> None:
        assert self.store is not None
        writer = OutboxWriter(self.store, cfg.name, self.config.nats.subject_prefix,
                              sample_ratio=self.config.tracing.sample_ratio,
                              observer=self.tracing, subjects=subject_router(cfg),
                              schemas=self.schemas.settings(cfg), fence=fence)
        self.schemas.writers[cfg.name] = writer
        checkpoint = await self.store.checkpoint(cfg.name)
        adapter = create(cfg, context)
        stats.adapter = adapter
        self._set_state(cfg.name, stats, "starting")
        loop = asyncio.get_running_loop()
        promote = loop.call_later(self.ready_grace_s, self._promote, cfg.name, stats, adapter)
        try:
            if fence is not None and isinstance(adapter, SupportsTakeover) and \
                    self.group is not None and await self.group.holds(fence):
                await adapter.take_over()  # a paused former owner may still hold the slot
            async for batch in adapter.changes(checkpoint):
                if stats.state == "starting":
                    self._set_state(cfg.name, stats, "running")
                if not len(batch) and batch.checkpoint is None:
                    continue
                # shield: once started, a commit completes even if we are being cancelled,
                # so the acknowledged checkpoint always matches what is in the outbox; and
                # the source is closed (and, in group mode, the lease given back) only
                # after it completed.
                commit = asyncio.ensure_future(writer.commit(batch))
                try:
                    await asyncio.shield(commit)
                except asyncio.CancelledError:
                    await asyncio.gather(commit, return_exceptions=True)
                    raise
                self._count(cfg.name, stats, batch.events, len(batch.dead_letters),
                            batch.messages)
                await adapter.acknowledge(batch.checkpoint)
        finally:
            promote.cancel()
            stats.adapter = None
            await adapter.close()

    def _promote(self, name: str, stats: AdapterStats, adapter: Adapter) -> None:
        """After the grace period, a quiet adapter that has not failed counts as running."""
        if stats.state == "starting" and stats.adapter is adapter:
            if adapter.connected:
                self._set_state(name, stats, "running")
            else:
                asyncio.get_running_loop().call_later(
                    self.ready_grace_s, self._promote, name, stats, adapter)

    @staticmethod
    def _count(name: str, stats: AdapterStats, events: list[Any], dead: int,
               messages: Sequence[Any] = ()) -> None:
        stats.batches += 1
        stats.events += len(events) + len(messages)
        stats.dead_letters += dead
        stats.last_batch_ms = int(time.time() * 1000)
        per_table: Counter[str] = Counter()
        for ev in events:
            table = f"{ev.schema}.{ev.table}" if ev.schema else ev.table
            per_table[table] += 1
            if ev.op == "r":
                stats.snapshot_reads[table] = stats.snapshot_reads.get(table, 0) + 1
        for msg in messages:  # routed (outbox) messages: labelled by ``outbox.<aggregate>``
            per_table[msg.subject.rpartition(".")[0] or msg.subject] += 1
        for table, n in per_table.items():
            metrics.EVENTS_CAPTURED.labels(name, table).inc(n)
        if dead:
            metrics.DEAD_LETTERS.labels(name, "capture").inc(dead)

    # -- operations: metrics, control channel, live state -----------------------------

    async def _refresh_loop(self, snapshots: SnapshotRunner) -> None:
        while True:
            for name, stats in self.adapters.items():
                with contextlib.suppress(Exception):
                    self._adapter_metrics(name, stats)
            with contextlib.suppress(Exception):
                await self._refresh_outbox()
            with contextlib.suppress(Exception):
                await self.schemas.refresh()
            try:
                for req in await asyncio.to_thread(self.control.claim_pending):
                    if req.kind == "schema_accept":
                        await self._accept(req)
                        continue
                    snapshots.start(req)
                state = self.live_state()
                self.overview.sample(state)
                await asyncio.to_thread(self.control.publish_state, self.started_ms, state)
            except Exception as e:  # the control file must never take the daemon down
                self._warn_once_a_minute(f"control channel: {e}")
            await asyncio.sleep(self.state_interval_s)

    async def _accept(self, req: Any) -> None:
        """A ``schema_accept`` request: release the table's held events."""
        try:
            text = await self.schemas.accept(req.adapter, (req.tables or [""])[0])
            status = DONE
        except Exception as e:
            text, status = str(e), FAILED
        await asyncio.to_thread(self.control.update, req.id, status=status,
                                message=self._redactor.redact(text))
        with contextlib.suppress(Exception):
            await self.schemas.refresh()

    def _warn_once_a_minute(self, text: str) -> None:
        """A warning that would repeat every second (a full disk): once a minute."""
        now = time.monotonic()
        if now - self._warned.get(text, -1e9) >= 60.0:
            self._warned[text] = now
            log.warning("%s (repeats are silent for a minute)", text)

    async def _refresh_outbox(self) -> None:
        assert self.store is not None
        st = await self.store.stats()
        metrics.OUTBOX_PENDING.set(st.pending)
        age = 0.0 if st.oldest_pending_ms is None else time.time() - st.oldest_pending_ms / 1000
        metrics.OUTBOX_OLDEST_AGE.set(max(0.0, age))
        if st.size_bytes is not None:
            metrics.OUTBOX_SIZE.set(st.size_bytes)
        self.nats_connected()  # refreshes cdc_nats_connected
        self._outbox = {"pending": st.pending, "oldest_pending_ms": st.oldest_pending_ms,
                        "size_bytes": st.size_bytes}
        if self.relay is not None and self.relay.state == "retrying":
            self.relay_state = "retrying"
        if self.relay_state in ("retrying", "starting") and self.nats_connected():
            self.relay_state = "running"

    def nats_connected(self) -> bool:
        """The relay's connection is up, or (relay idle/disconnected) NATS answers a probe.

        Also sets ``cdc_nats_connected``, so the gauge agrees with every readiness answer.
        """
        up = False
        if self.relay is not None and self.relay.connected:
            up = True
        elif self.probe is not None:
            self.probe.poke()
            up = self.probe.connected
        metrics.NATS_CONNECTED.set(1 if up else 0)
        return up

    def live_state(self) -> dict[str, Any]:
        rs = self.relay.stats if self.relay else None
        return {
            "pid": os.getpid(),
            "started_ms": self.started_ms,
            "ready": self.readiness()[0],
            "nats": {"connected": self.nats_connected(),
                     "servers": [self._redactor.redact(s) for s in self.config.nats.servers()]},
            "relay": {"state": "running" if self.relay and self.relay.connected
                      and self.relay_state != "standby" else self.relay_state,
                      "published": rs.published if rs else 0,
                      "duplicates": rs.duplicates if rs else 0,
                      "dead_lettered": rs.dead_lettered if rs else 0,
                      "retries": rs.retries if rs else 0},
            "outbox": dict(self._outbox),
            "adapters": {name: s.as_dict(s.lag)
                         for name, s in self.adapters.items()},
            "schemas": {"registry": self.schemas.bucket if self.schemas.enabled else None,
                        "tables": self.schemas.tables},
            **({"group": self.group.snapshot()} if self.group is not None else {}),
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        nats_ok = self.nats_connected()
        adapters = {n: s.state for n, s in self.adapters.items()}
        not_ready = sorted(n for n, st in adapters.items() if st not in READY_STATES)
        ready = nats_ok and not not_ready and not self.stop_event.is_set()
        return ready, {"nats": "connected" if nats_ok else "disconnected",
                       "adapters": adapters, "not_ready": not_ready}


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) readable by this user only: the outbox in it holds
    event bodies. An existing directory keeps the mode its owner gave it."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask


def _store_kind(url: str) -> str:
    return url.split(":", 1)[0]


def install_signal_handlers(daemon: Daemon) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)


async def run_daemon(config: BridgeConfig) -> int:
    daemon = Daemon(config)
    install_signal_handlers(daemon)
    return await daemon.run()
