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
  and reconnect on heal (only when that tmpfs could be mounted). NATS is made
  unreachable by the proxy, or with ``--cluster`` by freezing every node (SIGSTOP: the
  bridge knows all three URLs, so no proxy could stand between them);
- ``recreate:table`` (postgres): the legacy nightly reload of ``soak_items`` (copy,
  ``DROP``, rename, in one transaction) while its writers go on;
  ``alter:publication`` (postgres): ``ALTER PUBLICATION ... DROP TABLE soak_items``.
  Either way the bridge must notice (``table_check_interval``), put the table back in
  the publication and send a ``t`` then the table's rows as ``r``: the heal waits for
  the ``t`` in the stream and records a :class:`~bench.soak.verify.ResetWindow`;
- ``restore:state_dir``: an old state_dir put back (see :func:`restore_fault`); only
  when every source of the soak is ``restore_safe``.

With ``--cluster`` (a local three-node JetStream cluster and an R3 stream instead of one
nats-server) the NATS kinds are :func:`cluster_faults`' instead: ``stepdown:nats``,
``kill9:nats-leader``, ``stop:nats-follower``, ``kill9:nats-bridge-node``.

:func:`schedule` draws kinds from a shuffled bag, so a short run still sees each kind
before any repeats.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.soak.verify import ResetWindow

log = logging.getLogger("soak.faults")


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


@dataclass(slots=True)
class NatsBlock:
    """Make NATS unreachable for the bridge and back: ``block``/``unblock``."""

    block: Callable[[], None]
    unblock: Callable[[], None]


def proxy_block(nats_proxy: Any) -> NatsBlock:
    """One nats-server behind the soak's proxy: refuse its connections."""
    return NatsBlock(nats_proxy.refuse, nats_proxy.heal)


def cluster_block(cluster: Any, stream: str) -> NatsBlock:
    """A three-node cluster the bridge reaches directly: freeze every node (SIGSTOP),
    thaw them (SIGCONT) and wait until the cluster and the stream's replicas are back."""
    import asyncio

    def signal_all(sig: signal.Signals) -> None:
        for node in cluster.nodes:
            if node.proc is not None and node.proc.poll() is None:
                os.kill(node.proc.pid, sig)

    def unblock() -> None:
        signal_all(signal.SIGCONT)
        cluster.wait_healthy(120)
        asyncio.run(cluster.replicas_current(stream, 120))

    return NatsBlock(lambda: signal_all(signal.SIGSTOP), unblock)


def disk_fault(ballast: Ballast, nats: NatsBlock) -> Fault:
    """Outbox disk full while NATS is unreachable, so the outbox must grow and hit ENOSPC.

    (With NATS up, SQLite keeps reusing pages it already owns and a full disk goes
    unnoticed; the realistic case is an outage that lasts until the disk fills.)
    """

    def inject() -> None:
        nats.block()
        ballast.fill()

    def heal() -> None:
        ballast.remove()
        nats.unblock()

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


def reset_fault(kind: str, ddl: Callable[[], None], lengths: Callable[[], dict[int, int]],
                t_count: Callable[[], int | None], record: Callable[[ResetWindow], None],
                timeout_s: float = 90.0) -> Fault:
    """A table fault the bridge repairs with a ``t`` and a re-snapshot.

    ``inject`` notes the writers' per-key change counts (``lo``) and runs ``ddl``
    (writers keep going); ``heal`` waits (bounded) until one more ``t`` of the table is
    in the stream (``t_count``), then records the window with the counts at that moment
    (``hi``) for the verifier. A ``t`` that never comes is logged; the verifier then
    reports what it cost.
    """
    before: list[int] = [0]
    lo: list[dict[int, int]] = [{}]

    def count() -> int:
        deadline = time.monotonic() + 30.0
        while True:
            n = t_count()
            if n is not None:
                return n
            if time.monotonic() > deadline:
                raise TimeoutError("cannot count the table's t events")
            time.sleep(0.2)

    def inject() -> None:
        before[0] = count()
        lo[0] = lengths()
        ddl()

    def heal() -> None:
        deadline = time.monotonic() + timeout_s
        while (t_count() or 0) <= before[0]:
            if time.monotonic() > deadline:
                log.error("%s: no t event within %.0fs", kind, timeout_s)
                break
            time.sleep(0.1)
        record(ResetWindow(kind, lo[0], lengths()))

    return Fault(kind, inject, heal, lambda rng: 0.0)


def _copy_state(src: Path, dst: Path) -> None:
    """Make ``dst`` hold exactly ``src``'s files (``dst`` may be a mount point, so it is
    emptied, not replaced); the disk fault's ballast is never copied."""
    dst.mkdir(parents=True, exist_ok=True)
    for old in dst.iterdir():
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    for item in src.iterdir():
        if item.name == Ballast(src).path.name:
            continue
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)


def pending_rows(state: Path) -> int | None:
    """Rows in the SQLite outbox under ``state`` (read from a copy, the files untouched);
    None if there is none."""
    for db in sorted(state.glob("*.db")):
        with tempfile.TemporaryDirectory() as tmp:
            _copy_state(state, Path(tmp))
            try:
                conn = sqlite3.connect(Path(tmp) / db.name)
                try:
                    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
                finally:
                    conn.close()
            except sqlite3.Error:
                continue
    return None


def restore_fault(bridge: Any, state: Path, backup: Path, nats: NatsBlock,
                  drained: Callable[[], bool], window_s: float,
                  note: Callable[[str], None]) -> Fault:
    """An old state_dir restored, exercising the exact reconcile of the relay.

    ``inject``: NATS made unreachable for a moment, so the outbox holds rows not yet
    published; the bridge killed -9 and its state_dir copied aside (the backup); NATS
    back and the bridge restarted, which publishes those rows; ``drained()`` waits
    until everything committed so far is in the stream (the soak's probes); then a
    wait until those rows were published longer than the stream's duplicate window
    (``window_s``) ago, so JetStream's de-duplication can no longer catch them; the
    bridge killed -9 again and the backup put back. ``heal``: the bridge started on the
    restored state_dir. Its outbox holds rows the stream already has: the relay must
    find them (``bridge/relay/reconcile.py``) and publish none twice. Nothing is lost
    either, since everything committed after the backup had been published before the
    second kill (for a source whose position lives in the source, ``restore_safe``).
    """

    def inject() -> None:
        nats.block()
        time.sleep(1.5)  # the writers go on: rows pile up in the outbox
        bridge.kill9()
        _copy_state(state, backup)
        rows = pending_rows(backup)
        nats.unblock()
        bridge.start()
        if not drained():
            note("restore:state_dir: the bridge did not drain after the backup")
        published = time.monotonic()
        time.sleep(max(0.0, published + window_s + 2.0 - time.monotonic()))
        bridge.kill9()
        _copy_state(backup, state)
        note(f"restore:state_dir: the restored outbox held {rows} row(s), all published "
             f"more than {window_s:.0f}s (the duplicate window) before")

    return Fault("restore:state_dir", inject, bridge.start, lambda rng: 0.0)
