"""The relay in its own process: the daemon's side (start, supervise, mirror its counters).

Why a process. Capture (adapters, event encoding, outbox appends) and the relay
(outbox reads, publishing, PubAcks) are both CPU-bound Python; in one process they
share one interpreter lock and one event loop, so the whole pipeline ran at about half
of what either half does alone. The relay only needs the outbox store, which is shared
through the database anyway, so it runs as a child process (:mod:`cdc_bridge.daemon.relay_child`)
on the second core, with exactly the same :class:`cdc_bridge.relay.relay.Relay` code inside.

Guarantees are the relay's own and do not depend on which process runs it: rows are
published in ``seq`` order on one connection, deleted only after their PubAck, and a
republished row carries the same ``Nats-Msg-Id``. What the split adds:

- one relay per daemon: the child is started by the daemon, dies with it (Linux
  ``PR_SET_PDEATHSIG``: a ``kill -9`` of the daemon kills the child too; elsewhere the
  child stops when its stdin closes), and is only restarted after the previous one
  has exited;
- supervision: a child that dies (``kill -9``, a crash) is restarted with the shared
  back-off, from the first row not yet deleted; a fatal error in the child (NATS
  refusing the credentials, a stream that cannot be made to match the config) is
  reported on the pipe and stops the daemon like any fatal error;
- shutdown: after intake stopped, :meth:`RelayProcess.stop` asks the child to finish
  what is in flight and exit (bounded by the daemon's ``shutdown_timeout_s``, after
  which the child is killed; pending rows stay in the outbox).

The pipes. Daemon -> child (the child's stdin): first the settings, a 4-byte length and
a pickle (:class:`ChildSettings`; pickled so secrets never appear in ``argv`` or the
environment), then one byte per event: ``a`` when rows were appended (the child's
relay wakes at once instead of at its next poll), ``s`` to stop. Child -> daemon (its
stdout; the child's own fd 1 is redirected to stderr so no stray print can corrupt it):
one JSON line per report, at most every :data:`REPORT_INTERVAL_S` and whenever the
connection state changes, and a last one before exiting. A report carries the relay's
:class:`cdc_bridge.relay.relay.RelayStats`, whether it is connected, its state, and the current
values of the relay's Prometheus series; :class:`MetricMirror` adds the increase since
the previous report to the daemon's own metrics, so ``/metrics`` and ``/status`` look
exactly as they did with an in-process relay. Logs go to the shared stderr, through
the same format and secret redaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import struct
import sys
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from cdc_bridge import metrics
from cdc_bridge.daemon.logs import JsonFormatter
from cdc_bridge.kernel.errors import ConfigError, FatalError, RetryableError
from cdc_bridge.outbox.fence import Fence, LeaseLost
from cdc_bridge.outbox.runner import AsyncStore
from cdc_bridge.relay.relay import RelayStats
from cdc_bridge.relay.settings import NatsConfig, OutboxConfig, TracingConfig

log = logging.getLogger("cdc_bridge.relay")

#: Reports are sent at most this often (plus at once on a connection change).
REPORT_INTERVAL_S = 0.2
#: Byte commands on the child's stdin.
CMD_APPENDED, CMD_STOP = b"a", b"s"
#: The child's exit code after a fatal error (the reason came as a report line before).
EXIT_FATAL = 3
#: Group mode: the child's exit code after its relay lease was lost (a ``lease_lost``
#: report came before): that relay stops, the daemon does not.
EXIT_LEASE_LOST = 4
#: Counter families of the relay, forwarded from the child (series name -> counter).
FORWARDED_COUNTERS = {
    "cdc_events_published_total": metrics.EVENTS_PUBLISHED,
    "cdc_publish_duplicates_total": metrics.PUBLISH_DUPLICATES,
    "cdc_publish_failures_total": metrics.PUBLISH_FAILURES,
    "cdc_dead_letters_total": metrics.DEAD_LETTERS,
    "cdc_reconnects_total": metrics.RECONNECTS,
    "cdc_adapter_restarts_total": metrics.ADAPTER_RESTARTS,
    "cdc_relay_order_window_total": metrics.ORDER_WINDOW,
}
_LATENCY = "cdc_publish_latency_seconds"


class RelayProcessDied(RetryableError):
    """The relay child exited without being asked to: it is restarted with back-off."""


@dataclass(frozen=True, slots=True)
class ChildSettings:
    """Everything the child needs, sent once over its stdin."""

    nats: NatsConfig
    #: The ``outbox`` block, whole: the relay reads its own settings from it.
    outbox: OutboxConfig
    outbox_url: str
    log_level: int
    log_format: str
    secrets: tuple[str, ...]
    parent_pid: int
    #: The ``tracing`` block: the child exports its own (publish) spans.
    tracing: TracingConfig | None = None
    #: Group mode: the relay lease; every read and delete of the outbox checks it.
    fence: Fence | None = None


def encode_settings(settings: ChildSettings) -> bytes:
    blob = pickle.dumps(settings, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack(">I", len(blob)) + blob


def _read_exact(fd: int, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = os.read(fd, size - len(out))
        if not chunk:
            raise SystemExit("relay child: no settings on stdin (started by the daemon only)")
        out += chunk
    return bytes(out)


def read_settings(fd: int) -> ChildSettings:
    """Read the settings frame from ``fd`` (the child's stdin), not one byte further:
    what follows are commands, read by the event loop from the same descriptor."""
    (size,) = struct.unpack(">I", _read_exact(fd, 4))
    settings = pickle.loads(_read_exact(fd, size))
    if not isinstance(settings, ChildSettings):
        raise SystemExit("relay child: unexpected settings")
    return settings


# -- metrics: the child's snapshot, the daemon's mirror -------------------------------


def metrics_snapshot() -> dict[str, Any]:
    """The relay's Prometheus series in this process, as plain JSON-able values."""
    counters: list[list[Any]] = []
    latency: dict[str, dict[str, Any]] = {}  # adapter -> cumulative buckets, sum
    for family in metrics.REGISTRY.collect():
        for s in family.samples:
            if s.name in FORWARDED_COUNTERS and s.value:
                counters.append([s.name, s.labels, s.value])
            elif s.name.startswith(_LATENCY):
                per = latency.setdefault(s.labels.get("adapter", ""),
                                         {"buckets": [], "sum": 0.0})
                if s.name == _LATENCY + "_bucket":
                    per["buckets"].append(s.value)  # cumulative, in bucket order, +Inf last
                elif s.name == _LATENCY + "_sum":
                    per["sum"] = s.value
    return {"counters": counters, "latency": latency}


class MetricMirror:
    """Adds each report's increase over the previous one to this process's metrics.

    One mirror per child incarnation: a restarted child counts from zero again.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        #: Per adapter: the last report's cumulative buckets and sum.
        self._last_latency: dict[str, tuple[list[float], float]] = {}

    def apply(self, snap: dict[str, Any]) -> None:
        for name, labels, value in snap.get("counters", []):
            key = (name, tuple(sorted(labels.items())))
            delta = value - self._last.get(key, 0.0)
            self._last[key] = value
            if delta > 0:
                counter = FORWARDED_COUNTERS[name]
                (counter.labels(**labels) if labels else counter).inc(delta)
        for adapter, per in (snap.get("latency") or {}).items():
            buckets, total = per.get("buckets") or [], float(per.get("sum", 0.0))
            if not buckets or not adapter:
                continue
            prev, prev_sum = self._last_latency.get(adapter, ([0.0] * len(buckets), 0.0))
            per_bucket = [b - (buckets[i - 1] if i else 0.0) for i, b in enumerate(buckets)]
            prev_per = [b - (prev[i - 1] if i else 0.0) for i, b in enumerate(prev)]
            deltas = [max(0.0, a - b) for a, b in zip(per_bucket, prev_per, strict=True)]
            _merge_histogram(metrics.PUBLISH_LATENCY.labels(adapter), deltas,
                             total - prev_sum)
            self._last_latency[adapter] = (list(buckets), total)


def _merge_histogram(hist: Any, per_bucket: list[float], sum_delta: float) -> None:
    """Add observations counted elsewhere to ``hist`` (same buckets) without replaying them.

    prometheus_client has no public merge, so this adds to the histogram's per-bucket
    values directly; if those internals ever change, each bucket's count is replayed as
    observations of its upper bound instead (right counts, approximate sum).
    """
    slots = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if isinstance(slots, list) and len(slots) == len(per_bucket) and total is not None:
        for slot, n in zip(slots, per_bucket, strict=True):
            if n:
                slot.inc(n)
        if sum_delta > 0:
            total.inc(sum_delta)
        return
    bounds = getattr(hist, "_upper_bounds", [])
    for bound, n in zip(bounds, per_bucket, strict=False):
        for _ in range(int(n)):
            hist.observe(min(bound, 1e9))


# -- the daemon's side ----------------------------------------------------------------


def _log_format() -> str:
    root = logging.getLogger()
    return "json" if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers) \
        else "text"


@dataclass(slots=True)
class _Incarnation:
    proc: asyncio.subprocess.Process
    mirror: MetricMirror = field(default_factory=MetricMirror)
    fatal: dict[str, Any] | None = None
    lease_lost: str | None = None


class RelayProcess:
    """Runs :mod:`cdc_bridge.daemon.relay_child` and keeps its latest state for the daemon."""

    def __init__(self, store: AsyncStore, nats: NatsConfig, outbox: OutboxConfig,
                 outbox_url: str, *, secrets: frozenset[str],
                 tracing: TracingConfig | None = None) -> None:
        self.store = store
        self.tracing = tracing
        self.nats = nats
        self.outbox = outbox
        self.outbox_url = outbox_url
        self.secrets = secrets
        #: The child's counters, as of its last report (summed over incarnations).
        self.stats = RelayStats()
        self.connected = False
        self.state = "starting"
        self.pid: int | None = None
        self._base = RelayStats()
        self._child: _Incarnation | None = None
        self._stopping = False
        self.fence: Fence | None = None

    def resume(self, fence: Fence | None) -> None:
        """Group mode: run again (after a :meth:`stop`), with this relay lease."""
        self.fence = fence
        self._stopping = False

    def stop(self) -> None:
        """Ask the child to finish what is in flight and exit; no restart after that."""
        self._stopping = True
        self._send(CMD_STOP)

    def _send(self, cmd: bytes) -> None:
        child = self._child
        if child is None or child.proc.stdin is None or child.proc.stdin.is_closing():
            return
        with contextlib.suppress(OSError, RuntimeError):
            child.proc.stdin.write(cmd)

    async def run_once(self) -> None:
        """One child, from start to exit; raises so that the supervisor restarts it."""
        if self._stopping:
            return
        settings = ChildSettings(
            nats=self.nats, outbox=self.outbox, outbox_url=self.outbox_url,
            log_level=logging.getLogger().level, log_format=_log_format(),
            secrets=tuple(sorted(self.secrets)), parent_pid=os.getpid(),
            tracing=self.tracing, fence=self.fence)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cdc_bridge.daemon.relay_child", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        child = self._child = _Incarnation(proc)
        self.pid = proc.pid
        self._base = RelayStats(**{f.name: getattr(self.stats, f.name)
                                   for f in fields(RelayStats)})
        log.info("relay process started (pid %d)", proc.pid)
        assert proc.stdin is not None and proc.stdout is not None
        forward = asyncio.create_task(self._forward_appends(), name="relay-wake")
        try:
            proc.stdin.write(encode_settings(settings))
            if self._stopping:
                proc.stdin.write(CMD_STOP)
            async for line in proc.stdout:
                self._apply(child, line)
            code = await proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        finally:
            forward.cancel()
            await asyncio.gather(forward, return_exceptions=True)
            self.connected = False
            self._child = None
            if proc.stdin is not None:
                proc.stdin.close()
        if child.lease_lost is not None:
            raise LeaseLost(child.lease_lost)
        if child.fatal is not None:
            errors = child.fatal.get("config_errors")
            if errors:
                raise ConfigError(list(errors))
            raise FatalError(str(child.fatal.get("error")))
        if code == 0 and self._stopping:
            log.info("relay process exited")
            return
        self.state = "retrying"
        raise RelayProcessDied(f"relay process {proc.pid} exited with code {code}")

    async def _forward_appends(self) -> None:
        """Wake the child's relay whenever the daemon appended rows."""
        appended = self.store.appended
        while True:
            await appended.wait()
            appended.clear()
            self._send(CMD_APPENDED)

    def _apply(self, child: _Incarnation, line: bytes) -> None:
        try:
            report = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("relay process: unreadable report %r", line[:200])
            return
        if "fatal" in report:
            child.fatal = report["fatal"]
            return
        if "lease_lost" in report:
            child.lease_lost = str(report["lease_lost"])
            return
        stats = report.get("stats") or {}
        for f in fields(RelayStats):
            setattr(self.stats, f.name, getattr(self._base, f.name) + int(stats.get(f.name, 0)))
        connected = bool(report.get("connected"))
        if connected != self.connected:
            metrics.NATS_CONNECTED.set(1 if connected else 0)  # as the publisher did in-process
        self.connected = connected
        self.state = str(report.get("state") or self.state)
        child.mirror.apply(report.get("metrics") or {})
