"""Fault kinds, a seeded schedule, and how each fault is injected and healed.

Every fault is a pair of actions: ``inject`` breaks something, ``heal`` puts it back
after a hold time drawn from the seeded RNG. The driver then measures recovery: the
time from ``heal`` until a fresh probe row of every source is in the stream.

Kinds (each enabled only when its target exists in this soak):

- ``kill9:bridge``: SIGKILL the bridge process, restart it on heal;
- ``restart:nats``: stop nats-server (SIGTERM), start it again on heal;
- ``restart:postgres`` / ``restart:mariadb`` / ``restart:mariadb_binlog``: stop the
  server (a clean stop or kill -9, by a seeded coin) with its writers paused, start it
  on heal;
- ``cut:<target>``: reset every proxied connection (heal is immediate);
- ``refuse:<target>``: reset open and new connections until heal;
- ``delay:<target>``: add 50-400 ms to every chunk until heal;
- ``diskfull:outbox``: NATS unreachable and the small tmpfs holding the bridge's
  state_dir filled with a ballast file, so the growing outbox hits ENOSPC; delete it
  and reconnect on heal (only when that tmpfs could be mounted).

With ``--cluster`` (a local three-node JetStream cluster and an R3 stream instead of one
nats-server) the NATS kinds are :func:`cluster_faults`' instead: ``stepdown:nats``,
``kill9:nats-leader``, ``stop:nats-follower``, ``kill9:nats-bridge-node``.

:func:`schedule` draws kinds from a shuffled bag, so a short run still sees each kind
before any repeats.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Fault:
    kind: str
    inject: Callable[[], None]
    heal: Callable[[], None]
    hold: Callable[[random.Random], float]


def schedule(rng: random.Random, kinds: list[str]) -> Callable[[], str]:
    """An endless seeded sequence of kinds: every kind once per shuffled round."""
    bag: list[str] = []

    def draw() -> str:
        if not bag:
            bag.extend(kinds)
            rng.shuffle(bag)
        return bag.pop()

    return draw


def proxy_faults(target: str, proxy: Any) -> list[Fault]:
    delay_s = [0.0]

    def delay(rng: random.Random) -> float:
        delay_s[0] = rng.uniform(0.05, 0.4)
        return rng.uniform(1.0, 4.0)

    return [
        Fault(f"cut:{target}", proxy.cut, lambda: None, lambda rng: 0.0),
        Fault(f"refuse:{target}", proxy.refuse, proxy.heal, lambda rng: rng.uniform(0.5, 3.0)),
        Fault(f"delay:{target}", lambda: proxy.delay(delay_s[0]), proxy.heal, delay),
    ]


def server_fault(name: str, server: Any, writers: list[Any], *,
                 hard: Callable[[], bool] | None = None) -> Fault:
    """Stop ``server`` (kill -9 when ``hard()``) with its writers paused; start on heal."""

    def inject() -> None:
        for w in writers:
            w.pause()
        if hard is not None and hard() and hasattr(server, "kill9"):
            server.kill9()
        else:
            server.stop()

    def heal() -> None:
        _start_with_retries(server)
        for w in writers:
            w.resume()

    return Fault(f"restart:{name}", inject, heal, lambda rng: rng.uniform(0.5, 3.0))


def _start_with_retries(server: Any, timeout_s: float = 60.0) -> None:
    """Start ``server``; after a kill -9 its orphaned children may hold it back a while
    (PostgreSQL refuses to start while old backends keep the shared memory)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            server.start()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def bridge_fault(bridge: Any) -> Fault:
    return Fault("kill9:bridge", bridge.kill9, bridge.start, lambda rng: rng.uniform(0.0, 2.0))


class Ballast:
    """Fill a file system with one file until ENOSPC; remove it to free the space."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "ballast.bin"

    def fill(self) -> int:
        """Write zeros until the file system is full; returns the bytes written."""
        written = 0
        chunk = b"\0" * (1 << 20)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (len(chunk), 4096, 1):
                while True:
                    try:
                        written += os.write(fd, chunk[:size])
                    except OSError:
                        break
        finally:
            os.close(fd)
        return written

    def remove(self) -> None:
        if self.path.exists():
            os.unlink(self.path)


def disk_fault(ballast: Ballast, nats_proxy: Any) -> Fault:
    """Outbox disk full while NATS is unreachable, so the outbox must grow and hit ENOSPC.

    (With NATS up, SQLite keeps reusing pages it already owns and a full disk goes
    unnoticed; the realistic case is an outage that lasts until the disk fills.)
    """

    def inject() -> None:
        nats_proxy.refuse()
        ballast.fill()

    def heal() -> None:
        ballast.remove()
        nats_proxy.heal()

    return Fault("diskfull:outbox", inject, heal, lambda rng: rng.uniform(2.0, 5.0))


def cluster_faults(cluster: Any, stream: str) -> list[Fault]:
    """Faults of a three-node JetStream cluster (``--cluster``): each heal waits (bounded)
    until every node is back and the stream's replicas are current, so no two faults
    ever overlap into a lost quorum.

    - ``stepdown:nats``: the stream's leader steps down (an election);
    - ``kill9:nats-leader``: the leader's node killed -9, restarted on heal;
    - ``stop:nats-follower``: a node that is neither leader nor the bridge's, stopped;
    - ``kill9:nats-bridge-node``: the node the bridge is connected to, killed -9 (the
      bridge reconnects to another).
    """
    import asyncio

    victim: list[Any] = [None]

    def healed() -> None:
        if victim[0] is not None:
            _start_with_retries(victim[0])
            victim[0] = None
        cluster.wait_healthy(120)
        asyncio.run(cluster.replicas_current(stream, 120))

    def leader() -> Any:
        return cluster.node(asyncio.run(cluster.leader(stream)))

    def kill_leader() -> None:
        victim[0] = leader()
        victim[0].kill()

    def stop_follower() -> None:
        lead, bridge = leader(), cluster.node_of_client()
        victim[0] = next(n for n in cluster.nodes if n is not lead and n is not bridge)
        victim[0].stop()

    def kill_bridge_node() -> None:
        victim[0] = cluster.node_of_client() or leader()
        victim[0].kill()

    def hold(rng: random.Random) -> float:
        return rng.uniform(0.5, 3.0)

    return [
        Fault("stepdown:nats", lambda: asyncio.run(cluster.step_down(stream)), healed,
              lambda rng: 0.0),
        Fault("kill9:nats-leader", kill_leader, healed, hold),
        Fault("stop:nats-follower", stop_follower, healed, hold),
        Fault("kill9:nats-bridge-node", kill_bridge_node, healed, hold),
    ]
