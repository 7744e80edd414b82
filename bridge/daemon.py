"""The daemon: wires config, embedded NATS, outbox, adapters and relay, and supervises them.

Start-up: state_dir, then the embedded nats-server (when ``nats.url`` is absent), the
outbox store, the relay, and one supervised task per adapter. Each adapter task loads
its checkpoint from the store, iterates the adapter's batches, commits each batch to
the outbox (events + checkpoint in one transaction) and only then acknowledges it to
the adapter. A :class:`bridge.errors.RetryableError` restarts the adapter from its last
committed checkpoint with back-off; a :class:`bridge.errors.FatalError` stops the
daemon with a clear message.

Shutdown is two-phase: stop intake (cancel adapter tasks; a batch being committed
finishes first because the commit runs on the store's thread), let the relay finish
the batch in flight within ``shutdown_timeout_s``, then close everything and log a
one-line summary of counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

from adapters.base import AdapterConfig
from adapters.registry import AdapterContext, create
from bridge.backoff import retrying
from bridge.config import BridgeConfig
from bridge.embedded import EmbeddedNats
from bridge.errors import FatalError, RetryableError
from bridge.publisher import Publisher
from bridge.relay import Relay
from outbox.factory import open_store
from outbox.runner import AsyncStore
from outbox.writer import OutboxWriter

log = logging.getLogger("cdc_bridge.daemon")


@dataclass(slots=True)
class AdapterStats:
    batches: int = 0
    events: int = 0
    dead_letters: int = 0
    restarts: int = 0
    state: str = "starting"
    last_error: str | None = None


@dataclass(slots=True)
class DaemonState:
    adapters: dict[str, AdapterStats] = field(default_factory=dict)
    fatal: BaseException | None = None


class Daemon:
    def __init__(self, config: BridgeConfig, shutdown_timeout_s: float = 15.0) -> None:
        self.config = config
        self.shutdown_timeout_s = shutdown_timeout_s
        self.state = DaemonState()
        self.stop_event = asyncio.Event()
        self.embedded: EmbeddedNats | None = None
        self.store: AsyncStore | None = None
        self.relay: Relay | None = None

    def request_stop(self) -> None:
        if not self.stop_event.is_set():
            log.info("stop requested: stopping intake, draining in-flight publishes")
        self.stop_event.set()

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        tasks: list[asyncio.Task[Any]] = []
        nats_cfg = cfg.nats
        try:
            if nats_cfg.url is None:
                self.embedded = EmbeddedNats(nats_cfg.embedded.host, nats_cfg.embedded.port,
                                             cfg.state_dir / "nats")
                await self.embedded.start()
                tasks.append(asyncio.create_task(self.embedded.supervise(), name="embedded"))
            self.store = AsyncStore(open_store(cfg.outbox_url()))
            publisher = Publisher(nats_cfg)
            self.relay = Relay(self.store, publisher, prefix=nats_cfg.subject_prefix,
                               batch=cfg.outbox.relay_batch,
                               poll_interval_s=cfg.outbox.poll_interval)
            relay_task = asyncio.create_task(self._guard(self.relay.run(), "relay"), name="relay")
            context = AdapterContext(state_dir=cfg.state_dir,
                                     subject_prefix=nats_cfg.subject_prefix)
            adapter_tasks = [
                asyncio.create_task(self._guard(self._supervise(a, context), a.name), name=a.name)
                for a in cfg.adapter_configs
            ]
            log.info("cdc-bridge running: %d adapter(s), outbox %s, NATS %s",
                     len(adapter_tasks), _store_kind(cfg.outbox_url()),
                     "embedded " + self.embedded.url if self.embedded else ",".join(
                         nats_cfg.servers()))
            await self.stop_event.wait()
            # phase 1: stop intake
            for t in adapter_tasks:
                t.cancel()
            await asyncio.gather(*adapter_tasks, return_exceptions=True)
            # phase 2: let the relay finish what is in flight
            self.relay.stop()
            try:
                await asyncio.wait_for(asyncio.shield(relay_task), self.shutdown_timeout_s)
            except TimeoutError:
                log.warning("relay did not finish within %.0fs; pending rows stay in the outbox",
                            self.shutdown_timeout_s)
                relay_task.cancel()
                await asyncio.gather(relay_task, return_exceptions=True)
            await publisher.close()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._close()
        return 1 if self.state.fatal is not None else 0

    async def _close(self) -> None:
        pending = None
        if self.store is not None:
            with contextlib.suppress(Exception):
                pending = (await self.store.stats()).pending
            self.store.close()
        if self.embedded is not None:
            await self.embedded.stop()
        rs = self.relay.stats if self.relay else None
        captured = sum(a.events for a in self.state.adapters.values())
        log.info("stopped: captured=%d published=%d duplicates=%d dead_lettered=%d pending=%s",
                 captured, rs.published if rs else 0, rs.duplicates if rs else 0,
                 rs.dead_lettered if rs else 0, pending)

    async def _guard(self, coro: Any, what: str) -> None:
        """Turn a fatal error in any task into a daemon stop with a clear message."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except FatalError as e:
            log.error("%s: fatal: %s", what, e)
            self.state.fatal = e
            self.request_stop()
        except Exception as e:
            log.exception("%s: unexpected error: %s", what, e)
            self.state.fatal = e
            self.request_stop()

    async def _supervise(self, cfg: AdapterConfig, context: AdapterContext) -> None:
        stats = self.state.adapters.setdefault(cfg.name, AdapterStats())
        adapter_log = logging.getLogger(f"cdc_bridge.adapter.{cfg.name}")
        async for attempt in retrying(f"adapter {cfg.name}", adapter_log, initial_s=0.5,
                                      max_s=30.0, retry_on=(RetryableError,)):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    stats.restarts += 1
                try:
                    await self._capture(cfg, context, stats)
                except RetryableError as e:
                    stats.state, stats.last_error = "retrying", str(e)
                    raise
                stats.state = "finished"

    async def _capture(self, cfg: AdapterConfig, context: AdapterContext,
                       stats: AdapterStats) -> None:
        assert self.store is not None
        writer = OutboxWriter(self.store, cfg.name, self.config.nats.subject_prefix)
        checkpoint = await self.store.checkpoint(cfg.name)
        adapter = create(cfg, context)
        stats.state = "running"
        try:
            async for batch in adapter.changes(checkpoint):
                if not len(batch) and batch.checkpoint is None:
                    continue
                # shield: once started, a commit completes even if we are being cancelled,
                # so the acknowledged checkpoint always matches what is in the outbox.
                await asyncio.shield(writer.commit(batch))
                stats.batches += 1
                stats.events += len(batch.events)
                stats.dead_letters += len(batch.dead_letters)
                await adapter.acknowledge(batch.checkpoint)
        finally:
            await adapter.close()


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
