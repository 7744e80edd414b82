"""A small TCP proxy that can cut, refuse and delay connections, for fault injection.

One :class:`FaultProxy` listens on a free local port and forwards every connection to one
upstream ``host:port``. The bridge is configured to reach a server through it, so the
soak can break the network path without touching the server:

- :meth:`FaultProxy.cut` aborts every open connection (both sides see a reset);
- :meth:`FaultProxy.refuse` makes new connections fail at once (accepted, then reset)
  until :meth:`FaultProxy.heal`;
- :meth:`FaultProxy.delay` holds every chunk for ``seconds`` before forwarding it.
  Delayed chunks keep their order: each direction of a connection is a reader task
  stamping chunks with a due time and a writer task that waits for it.

Design: the proxy runs its own asyncio loop in a daemon thread, so a synchronous driver
(the soak, which also drives blocking database writers and server restarts) controls
it with plain method calls that hop onto the loop with ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_CHUNK = 64 * 1024


@dataclass(slots=True)
class ProxyStats:
    accepted: int = 0
    refused: int = 0
    cut: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class _Pipe:
    """One proxied connection: two directions, each a reader and a delaying writer."""

    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader,
                 asyncio.StreamWriter], upstream: tuple[asyncio.StreamReader,
                 asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []
        self._open_directions = 2

    def start(self) -> None:
        for src, dst, up in ((self.client, self.upstream, True),
                             (self.upstream, self.client, False)):
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
            self.tasks.append(asyncio.create_task(self._read(src[0], queue, up)))
            self.tasks.append(asyncio.create_task(self._write(dst[1], queue)))

    async def _read(self, reader: asyncio.StreamReader,
                    queue: asyncio.Queue[tuple[float, bytes]], up: bool) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if up:
                    self.proxy.stats.bytes_up += len(data)
                else:
                    self.proxy.stats.bytes_down += len(data)
                await queue.put((time.monotonic() + self.proxy.delay_s, data))
                if not data:
                    return
        except (OSError, asyncio.IncompleteReadError):
            self.abort()

    async def _write(self, writer: asyncio.StreamWriter,
                     queue: asyncio.Queue[tuple[float, bytes]]) -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # EOF from the other side: half-close, as TCP would
                    if writer.can_write_eof():
                        writer.write_eof()
                    self._direction_closed()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            self.abort()

    def _direction_closed(self) -> None:
        self._open_directions -= 1
        if self._open_directions == 0:
            for _, w in (self.client, self.upstream):
                w.transport.close()
            self.proxy.pipes.discard(self)

    def abort(self) -> None:
        """Reset both sockets and stop forwarding."""
        for _, w in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                sock = w.get_extra_info("socket")
                if sock is not None:  # SO_LINGER 0: close sends RST, like a cut cable + reset
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    b"\x01\x00\x00\x00\x00\x00\x00\x00")
            w.transport.abort()
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()
        self.proxy.pipes.discard(self)


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port`` with faults on demand."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1",
                 name: str = "proxy") -> None:
        self.name = name
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.delay_s = 0.0
        self.refusing = False
        self.stats = ProxyStats()
        self.pipes: set[_Pipe] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name=f"proxy-{name}", daemon=True)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults -----------------------------------------------------------------------

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        return self._call(self._cut())

    def refuse(self) -> None:
        """Cut everything and reset new connections until :meth:`heal`."""
        self.refusing = True
        self.cut()

    def delay(self, seconds: float) -> None:
        """Hold every forwarded chunk for ``seconds`` (0 = no delay)."""
        self.delay_s = max(0.0, seconds)

    def heal(self) -> None:
        """Accept and forward normally again, without delay."""
        self.refusing = False
        self.delay_s = 0.0

    @property
    def open_connections(self) -> int:
        return len(self.pipes)

    # -- loop side --------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._cut()

    async def _cut(self) -> int:
        pipes = list(self.pipes)
        for p in pipes:
            p.abort()
        self.stats.cut += len(pipes)
        await asyncio.sleep(0)
        return len(pipes)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.stats.refused += 1
            writer.transport.abort()
            return
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
        except (OSError, TimeoutError):
            self.stats.refused += 1
            writer.transport.abort()
            return
        self.stats.accepted += 1
        pipe = _Pipe(self, (reader, writer), upstream)
        self.pipes.add(pipe)
        pipe.start()
