"""The relay child process: ``python -m cdc_bridge.daemon.relay_child``, started by the daemon only.

It reads its settings from stdin (see :mod:`cdc_bridge.daemon.relay_process` for the pipes and
why the relay runs in its own process), opens the outbox store and NATS, and runs the
same supervised :class:`cdc_bridge.relay.relay.Relay` the daemon used to run in-process.

Lifetime: the child dies with the daemon (``PR_SET_PDEATHSIG`` on Linux; and it exits
when stdin reaches end-of-file, the daemon having gone). It ignores SIGINT and SIGTERM:
a Ctrl-C or a service manager's stop reaches the daemon too, which first stops intake
and then sends ``s``, on which the relay finishes what is in flight and the child exits
0. A fatal error is reported as a ``{"fatal": ...}`` line, then the exit code is
:data:`cdc_bridge.daemon.relay_process.EXIT_FATAL`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import asdict
from typing import Any

import orjson

from cdc_bridge import metrics
from cdc_bridge.daemon.logs import setup_logging
from cdc_bridge.daemon.relay_process import (
    CMD_APPENDED,
    CMD_STOP,
    EXIT_FATAL,
    EXIT_LEASE_LOST,
    REPORT_INTERVAL_S,
    ChildSettings,
    metrics_snapshot,
    read_settings,
)
from cdc_bridge.daemon.supervisor import supervise
from cdc_bridge.kernel.errors import ConfigError, FatalError
from cdc_bridge.outbox.factory import open_store
from cdc_bridge.outbox.fence import LeaseLost, fenced
from cdc_bridge.outbox.runner import AsyncStore
from cdc_bridge.relay.publisher import Publisher
from cdc_bridge.relay.relay import Relay
from cdc_bridge.relay.tracing import Tracing

log = logging.getLogger("cdc_bridge.relay")
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when the daemon dies (Linux); exit if it already
    did."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


class Reporter:
    """Writes the relay's state to the daemon as JSON lines."""

    def __init__(self, relay: Relay, publisher: Publisher, fd: int) -> None:
        self.relay = relay
        self.publisher = publisher
        self.fd = fd
        self.state = "starting"
        self._last: bytes = b""
        self._last_at = 0.0
        self._last_connected: bool | None = None

    def line(self) -> bytes:
        return orjson.dumps({
            "stats": asdict(self.relay.stats),
            "connected": self.publisher.is_connected,
            "state": self.state,
            "metrics": metrics_snapshot(),
        }) + b"\n"

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def maybe_report(self, force: bool = False) -> None:
        now = time.monotonic()
        connected = self.publisher.is_connected
        if connected and self.state == "retrying":
            self.state = "running"
        if not force and connected == self._last_connected and \
                now - self._last_at < REPORT_INTERVAL_S:
            return
        data = self.line()
        if force or data != self._last:
            self.send(data)
            self._last = data
        self._last_at = now
        self._last_connected = connected

    async def loop(self) -> None:
        while True:
            self.maybe_report()
            await asyncio.sleep(REPORT_INTERVAL_S / 4)


async def _commands(store: AsyncStore, relay: Relay) -> None:
    """Apply the daemon's commands from stdin; end of file (the daemon gone) stops too."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        data = await reader.read(4096)
        if CMD_APPENDED in data:
            store.appended.set()
        if not data or CMD_STOP in data:
            relay.stop()
            return


async def run(settings: ChildSettings, report_fd: int) -> int:
    store = AsyncStore(fenced(open_store(settings.outbox_url), settings.fence))
    publisher = Publisher(settings.nats)
    tracing = Tracing.start(settings.tracing, "relay")  # its own exporter, same config
    relay = Relay(store, publisher, settings.outbox, tracing=tracing)
    reporter = Reporter(relay, publisher, report_fd)
    commands = asyncio.create_task(_commands(store, relay), name="commands")
    reports = asyncio.create_task(reporter.loop(), name="reports")

    def failed(e: BaseException) -> None:
        reporter.state = "retrying"

    code = 0
    try:
        reporter.state = "running"
        await supervise("relay", relay.run, log, on_failure=failed,
                        on_restart=lambda: metrics.ADAPTER_RESTARTS.labels("_relay").inc())
    except LeaseLost as e:
        log.warning("relay: lost the relay lease, stopping: %s", e)
        reporter.send(orjson.dumps({"lease_lost": str(e)}) + b"\n")
        code = EXIT_LEASE_LOST
    except FatalError as e:
        fatal: dict[str, Any] = {"error": str(e)}
        if isinstance(e, ConfigError):
            fatal["config_errors"] = e.errors
        log.error("relay: fatal: %s", e)
        reporter.send(orjson.dumps({"fatal": fatal}) + b"\n")
        code = EXIT_FATAL
    finally:
        for t in (commands, reports):
            t.cancel()
        await asyncio.gather(commands, reports, return_exceptions=True)
        with contextlib.suppress(Exception):
            await publisher.close()
        reporter.state = "stopped"
        with contextlib.suppress(OSError):
            reporter.maybe_report(force=True)
        store.close()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)
    return code


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = read_settings(0)
    die_with_parent(settings.parent_pid)
    report_fd = os.dup(1)  # the report pipe; fd 1 (print, stray output) goes to stderr
    os.dup2(2, 1)
    setup_logging(logging.getLevelName(settings.log_level), settings.log_format,
                  settings.secrets)
    sys.exit(asyncio.run(run(settings, report_fd)))


if __name__ == "__main__":
    main()
