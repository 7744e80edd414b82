"""Free TCP ports and waiting for a port to listen."""

from __future__ import annotations

import random
import socket
import time

#: Ports handed out in this test session (each test server keeps its own across restarts).
_GIVEN: set[int] = set()
#: Below the kernel's ephemeral range (32768-60999 by default): a port from that range can
#: be taken by any outgoing client connection (tests open many) between the choice and the
#: server's bind, or while a server is stopped for a restart.
_LOW, _HIGH = 20000, 32000


def free_port() -> int:
    """A port nothing listens on, outside the ephemeral range, not given out before."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(_LOW, _HIGH)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise RuntimeError(f"no free port in {_LOW}-{_HIGH}")


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_listening(port: int, timeout_s: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while not listening(port, host):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s")
        time.sleep(0.05)


def wait_closed(port: int, timeout_s: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while listening(port, host):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host}:{port} still listening after {timeout_s}s")
        time.sleep(0.05)
