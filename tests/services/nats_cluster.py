"""A real three-node JetStream cluster for tests, started from deploy/nats/nats-cluster.conf.

Three ``nats-server`` processes (the binary from the venv, as for
:mod:`tests.services.nats_server`) on free client, route and monitoring ports, each with
its own store directory, routes among all three, and the very config file compose and
Kubernetes use: what differs per node comes from the environment the file reads
(``SERVER_NAME``, ``NATS_LISTEN``, ``NATS_ROUTES``, ...), so the tests run what is deployed.

Faults: :meth:`ClusterNode.kill` (kill -9), :meth:`ClusterNode.stop` (SIGTERM),
:meth:`ClusterNode.start` (restart on the same ports and store), and
:meth:`NatsCluster.step_down` (a stream leader election through
``$JS.API.STREAM.LEADER.STEPDOWN.<stream>``). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors

from cdc_bridge.daemon.embedded import nats_server_binary
from tests.services.ports import free_port, wait_closed, wait_listening

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-cluster.conf"
#: The accounts of the config file: the bridge's user and the passwords the fixture sets.
BRIDGE_USER, BRIDGE_PASSWORD = "bridge", "bridge-test-pw"
PASSWORDS = {"BRIDGE_PASSWORD": BRIDGE_PASSWORD, "READER_PASSWORD": "reader-test-pw",
             "SYS_PASSWORD": "sys-test-pw"}


class ClusterNode:
    def __init__(self, name: str, store_dir: Path) -> None:
        self.name = name
        self.store_dir = store_dir
        self.port = free_port()
        self.cluster_port = free_port()
        self.http_port = free_port()
        self.routes: list[int] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
        return {**os.environ, **PASSWORDS,
                "SERVER_NAME": self.name,
                "NATS_LISTEN": f"127.0.0.1:{self.port}",
                "NATS_HTTP": f"127.0.0.1:{self.http_port}",
                "NATS_CLUSTER_LISTEN": f"127.0.0.1:{self.cluster_port}",
                "NATS_ROUTES": f"[{routes}]",
                "NATS_STORE_DIR": str(self.store_dir / "jetstream")}

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(CONFIG)], env=self.env(),
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        wait_listening(self.port)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no goodbye to the routes, unsynced writes lost."""
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        wait_closed(self.port)

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        wait_closed(self.port)

    def healthz(self) -> bool:
        """``/healthz``: the server is up and its JetStream (streams, meta) is current."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz",
                                        timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def jsz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/jsz", timeout=2) as r:
            return dict(json.loads(r.read()))


class NatsCluster:
    def __init__(self, base_dir: Path, size: int = 3) -> None:
        self.nodes = [ClusterNode(f"n{i + 1}", base_dir / f"n{i + 1}") for i in range(size)]
        for node in self.nodes:
            node.routes = [n.cluster_port for n in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def connect_options(self) -> dict[str, Any]:
        """nats-py keyword arguments to reach the cluster as the bridge's user."""
        return {"servers": self.urls, "user": BRIDGE_USER, "password": BRIDGE_PASSWORD}

    def nats_config(self, **kw: Any) -> dict[str, Any]:
        """The bridge's ``nats`` block for this cluster (all three URLs, 3 replicas)."""
        return {"url": self.urls, "user": BRIDGE_USER, "password": BRIDGE_PASSWORD,
                "replicas": 3, **kw}

    def node(self, name: str) -> ClusterNode:
        return next(n for n in self.nodes if n.name == name)

    def start(self, timeout_s: float = 60.0) -> None:
        for node in self.nodes:
            node.start()
        self.wait_healthy(timeout_s)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Every running node answers ``/healthz`` and the meta group has a leader."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = [n for n in self.nodes if n.running]
            if all(n.healthz() for n in running) and self._meta_leader(running):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not healthy after {timeout_s}s")
            time.sleep(0.1)

    @staticmethod
    def _meta_leader(running: list[ClusterNode]) -> bool:
        for node in running:
            with contextlib.suppress(OSError, ValueError):
                if node.jsz().get("meta_cluster", {}).get("leader"):
                    return True
        return False

    def url_of(self, node: ClusterNode) -> str:
        """``node``'s URL with the bridge user's credentials in it (for plain clients)."""
        return f"nats://{BRIDGE_USER}:{BRIDGE_PASSWORD}@127.0.0.1:{node.port}"

    def node_of_client(self, name: str = "cdc-bridge") -> ClusterNode | None:
        """The running node a client called ``name`` is connected to (``/connz``)."""
        for node in self.nodes:
            if not node.running:
                continue
            url = f"http://127.0.0.1:{node.http_port}/connz?limit=1024"
            with contextlib.suppress(OSError, ValueError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    conns = json.loads(resp.read()).get("connections", [])
                if any(c.get("name") == name for c in conns):
                    return node
        return None

    # -- stream leaders ----------------------------------------------------------------

    async def _call(self, fn: Any, timeout_s: float) -> Any:
        """``fn(nc)`` on a fresh connection, retried (elections) until ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                nc = await nats.connect(**self.connect_options, connect_timeout=2,
                                        max_reconnect_attempts=1)
                try:
                    return await fn(nc)
                finally:
                    await nc.close()
            except (TimeoutError, OSError, nats.errors.Error, AssertionError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def leader(self, stream: str = "CDC", timeout_s: float = 30.0) -> str:
        """The name of ``stream``'s current leader (waits out an election)."""
        async def ask(nc: Any) -> str:
            info = await nc.jetstream(timeout=2).stream_info(stream)
            name = info.cluster.leader if info.cluster else None
            assert name, "no leader yet"
            return str(name)

        return str(await self._call(ask, timeout_s))

    async def replicas_current(self, stream: str = "CDC", timeout_s: float = 60.0) -> None:
        """Wait until ``stream`` has a leader and every replica is current."""
        async def ask(nc: Any) -> None:
            info = await nc.jetstream(timeout=2).stream_info(stream)
            cluster = info.cluster
            assert cluster and cluster.leader, "no leader"
            replicas = cluster.replicas or []
            assert len(replicas) == len(self.nodes) - 1, "replicas missing"
            assert all(r.current and not r.offline for r in replicas), "replica behind"

        await self._call(ask, timeout_s)

    async def step_down(self, stream: str = "CDC", timeout_s: float = 30.0) -> tuple[str, str]:
        """Make ``stream``'s leader step down; (old leader, new leader)."""
        old = await self.leader(stream, timeout_s)

        async def ask(nc: Any) -> None:
            reply = await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", b"",
                                     timeout=5)
            body = json.loads(reply.data)
            assert body.get("success"), body

        await self._call(ask, timeout_s)
        deadline = time.monotonic() + timeout_s
        while True:
            new = await self.leader(stream, timeout_s)
            if new != old:
                return old, new
            if time.monotonic() > deadline:
                raise TimeoutError(f"leader of {stream} still {old} after step-down")
            await asyncio.sleep(0.1)
