"""A real three-node JetStream cluster (tests/services/nats_cluster.py, started from
deploy/nats/nats-cluster.conf), an R3 stream, and the faults a cluster has: stream leader
step-downs, the leader's node killed (-9) and restarted, a non-leader stopped, the node
the bridge is connected to killed (the bridge reconnects to another).

Each run writes bursts of changes while the faults happen, at the default pipeline depth,
then checks from the stream: every change exactly once, per-key order kept (one key's
changes span several subjects: ``c`` and ``u``), final state equal to the source.

- the relay in process, on a SQLite outbox filled by a writer;
- the real daemon (``cdc-bridge run``) with a PostgreSQL source;
- the real daemon with ``sql_poll`` on SQLite;
- ``cdc-bridge init`` on the cluster (replicas, placement, updating a stream to R3).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_bridge.outbox.base import OutboxMessage
from tests.helpers import BridgeProcess, StoredMessage, count_messages, read_raw, write_config
from tests.services.nats_cluster import ClusterNode, NatsCluster
from tests.test_pg_adapter import pg_dsn  # noqa: F401  (the fixture)
from tests.test_relay import RelayRunner, nats_cfg

KEYS = 40


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path / "cluster")
    try:
        c.start()
        yield c
    finally:
        for node in c.nodes:
            node.kill()


# -- reading back ------------------------------------------------------------------------


async def stream_read(cluster: NatsCluster, subject: str = ">") -> list[StoredMessage]:
    msgs = await read_raw(cluster.urls[0], "CDC", subject,
                          user=cluster.connect_options["user"],
                          password=cluster.connect_options["password"])
    out = []
    for m in msgs:
        body: dict[str, Any] = json.loads(m.data) if m.data[:1] == b"{" else {
            "_raw": m.data.decode()}
        out.append(StoredMessage(m.metadata.sequence.stream, m.subject, dict(m.headers or {}),
                                 body))
    return out


async def stream_count(cluster: NatsCluster) -> int:
    """Row messages in CDC (not the tables' schema-change events)."""
    async def ask(nc: Any) -> int:
        return await count_messages(nc.jetstream(timeout=2), "CDC")

    return int(await cluster._call(ask, 30))


def assert_versions(per_key: dict[Any, list[int]], expected: dict[Any, list[int]]) -> None:
    """Each key's versions in stream order are exactly the expected ones: every change
    once (no loss, no duplicate) and in order."""
    breaks = sum(1 for vs in per_key.values() for a, b in itertools.pairwise(vs)
                 if b <= a)
    dups = sum(len(vs) - len(set(vs)) for vs in per_key.values())
    missing = {k: sorted(set(v) - set(per_key.get(k, []))) for k, v in expected.items()}
    missing = {k: v[:5] for k, v in missing.items() if v}
    assert (breaks, dups, missing) == (0, 0, {}), \
        f"{breaks} order breaks, {dups} duplicates, missing {list(missing.items())[:3]}"
    assert set(per_key) == set(expected)


# -- faults ------------------------------------------------------------------------------


async def healed(cluster: NatsCluster) -> None:
    await asyncio.to_thread(cluster.wait_healthy, 60)
    await cluster.replicas_current("CDC", 60)


async def run_faults(cluster: NatsCluster, burst: Callable[[], Awaitable[None]],
                     progressed: Callable[[], Awaitable[None]],
                     connected: Callable[[], ClusterNode | None]) -> list[str]:
    """Every fault kind, each right after a burst of changes (a full pipeline), waiting
    for progress after each and for a healed cluster before the next."""
    done: list[str] = []
    for _ in range(3):
        await burst()
        await cluster.step_down("CDC")
        done.append("step-down")
        await progressed()
    await burst()
    leader = cluster.node(await cluster.leader("CDC"))
    leader.kill()
    done.append(f"kill -9 leader {leader.name}")
    await progressed()
    leader.start()
    await healed(cluster)
    await burst()
    current = await cluster.leader("CDC")
    follower = next(n for n in cluster.nodes if n.name != current)
    follower.stop()
    done.append(f"stop non-leader {follower.name}")
    await progressed()
    follower.start()
    await healed(cluster)
    await burst()
    node = connected()
    assert node is not None, "the bridge is connected to no node"
    node.kill()
    done.append(f"kill -9 the bridge's node {node.name}")
    await progressed()
    node.start()
    await healed(cluster)
    return done


# -- the relay in process ----------------------------------------------------------------


def key_msgs(counter: dict[int, int], n: int, start_id: int) -> list[OutboxMessage]:
    """``n`` changes round the keys: a key's first change is ``c``, the later ones ``u``."""
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        key = (start_id + i) % KEYS
        version = counter[key] = counter.get(key, 0) + 1
        op = "c" if version == 1 else "u"
        out.append(OutboxMessage(f"k-{start_id + i}", f"cdc.erp._.acct.{op}",
                                 b"%d|%d|" % (key, version) + b"." * 300, None, now))
    return out


async def relay_through_faults(tmp_path: Path, cluster: NatsCluster, *, chain: bool = True
                               ) -> tuple[dict[int, list[int]], dict[int, int], int, Any]:
    """The relay (default pipeline depth) on a SQLite outbox filled by a writer, through
    every fault kind; (versions per key in stream order, last version per key, rows
    written, relay stats). ``chain=False``: the relay without its chain, for comparison
    (bench/bench_cluster.py)."""
    cfg = nats_cfg(cluster.urls, user="bridge", password=cluster.connect_options["password"],
                   replicas=3)
    r = RelayRunner(tmp_path / "o.db", cfg, expect_last_sequence=chain)
    counter: dict[int, int] = {}
    written = 0
    stop = asyncio.Event()
    lock = asyncio.Lock()  # the outbox order is the version order

    async def write(n: int) -> None:
        nonlocal written
        async with lock:
            msgs = key_msgs(counter, n, written)
            written += n
            await r.append(msgs, chunk=500)

    async def trickle() -> None:
        while not stop.is_set():
            await write(50)
            await asyncio.sleep(0.02)

    async def progressed() -> None:
        start = r.relay.stats.published + r.relay.stats.duplicates
        deadline = time.monotonic() + 60
        while r.relay.stats.published + r.relay.stats.duplicates < start + 500:
            assert time.monotonic() < deadline, "no progress after the fault"
            assert r.task is not None and not r.task.done()
            await asyncio.sleep(0.05)

    def connected() -> ClusterNode | None:
        nc = r.publisher.nc
        port = nc.connected_url.port if nc is not None and nc.connected_url else None
        return next((n for n in cluster.nodes if n.port == port), None)

    r.start()
    writer = asyncio.create_task(trickle())
    try:
        faults = await run_faults(cluster, lambda: write(3000), progressed, connected)
        stop.set()
        await writer
        await r.drained(timeout_s=120)
        stats = r.relay.stats
    finally:
        stop.set()
        await r.stop()
    assert len(faults) == 6
    per_key: dict[int, list[int]] = {}
    for m in await stream_read(cluster):
        key, version = m.body["_raw"].split("|")[:2]
        per_key.setdefault(int(key), []).append(int(version))
    return per_key, counter, written, stats


async def test_relay_order_and_exactly_once_through_cluster_faults(
        tmp_path: Path, cluster: NatsCluster) -> None:
    assert RelayRunner(tmp_path / "x.db", nats_cfg("nats://x")).relay.max_in_flight == 4000
    per_key, last, written, stats = await relay_through_faults(tmp_path, cluster)
    assert_versions(per_key, {k: list(range(1, v + 1)) for k, v in last.items()})
    assert sum(map(len, per_key.values())) == written
    assert stats.reordered == 0 and stats.chain_breaks == 0
    assert stats.reconnects >= 3, stats  # the kills and the stop cost connections


# -- the daemon --------------------------------------------------------------------------


def bridge_config(tmp: Path, cluster: NatsCluster, adapter: dict[str, Any]) -> Path:
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": cluster.nats_config(stream="CDC", subject_prefix="cdc", ack_timeout="3s",
                                    retry_max="1s", connect_timeout="2s"),
        "adapters": [adapter],
    })


async def wait_stream_count(cluster: NatsCluster, n: int, bridge: BridgeProcess,
                            timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := await stream_count(cluster)) < n:
        assert bridge.alive(), bridge.log()[-3000:]
        assert time.monotonic() < deadline, f"stream holds {got} of {n} events"
        await asyncio.sleep(0.2)


def daemon_progress(cluster: NatsCluster, bridge: BridgeProcess
                    ) -> Callable[[], Awaitable[None]]:
    async def progressed() -> None:
        start = await stream_count(cluster)
        deadline = time.monotonic() + 60
        while await stream_count(cluster) < start + 200:
            assert bridge.alive(), bridge.log()[-3000:]
            assert time.monotonic() < deadline, "no progress after the fault"
            await asyncio.sleep(0.1)

    return progressed


async def test_daemon_postgres_source_through_cluster_faults(
        tmp_path: Path, cluster: NatsCluster, pg_dsn: str) -> None:  # noqa: F811
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL, pad text)")
        conn.execute("INSERT INTO acct SELECT g, 0, repeat('x', 200) "
                     "FROM generate_series(0, %s) g", (KEYS - 1,))
    cfg = bridge_config(tmp_path, cluster, {
        "name": "shop", "type": "postgres", "dsn": pg_dsn, "tables": ["public.acct"],
        "snapshot": "initial", "heartbeat_interval": "1s", "status_interval": "1s"})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    await wait_stream_count(cluster, KEYS, bridge)
    updates = [0]
    stop = threading.Event()

    def update(rounds: int) -> None:
        with psycopg.connect(pg_dsn) as conn:  # one transaction: a burst
            for _ in range(rounds):
                conn.execute("UPDATE acct SET n = n + 1")
            updates[0] += rounds * KEYS

    def trickle() -> None:
        while not stop.is_set():
            update(1)
            time.sleep(0.05)

    async def burst() -> None:
        await asyncio.to_thread(update, 60)

    writer = threading.Thread(target=trickle)
    writer.start()
    try:
        faults = await run_faults(cluster, burst, daemon_progress(cluster, bridge),
                                  cluster.node_of_client)
    finally:
        stop.set()
        writer.join()
    await wait_stream_count(cluster, KEYS + updates[0], bridge)
    assert bridge.terminate() == 0
    assert len(faults) == 6
    stored = await stream_read(cluster, "cdc.shop.>")
    per_key: dict[int, list[int]] = {}
    for m in stored:
        after = m.body["data"]["after"]
        per_key.setdefault(after["id"], []).append(after["n"])
    rounds = updates[0] // KEYS
    assert_versions(per_key, {k: list(range(0, rounds + 1)) for k in range(KEYS)})
    assert len(stored) == KEYS + updates[0]
    with psycopg.connect(pg_dsn) as conn:
        table = dict(conn.execute("SELECT id, n FROM acct").fetchall())
    assert {k: v[-1] for k, v in per_key.items()} == table
    assert len({m.headers["Nats-Msg-Id"] for m in stored}) == len(stored)


async def test_daemon_sql_poll_sqlite_through_cluster_faults(
        tmp_path: Path, cluster: NatsCluster) -> None:
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, k int, v int, pad text)")
    cfg = bridge_config(tmp_path, cluster, {
        "name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}", "poll_interval": "100ms",
        "batch_size": 2000,
        "tables": [{"name": "ledger", "mode": "incrementing", "incrementing_column": "id"}]})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    counter: dict[int, int] = {}
    rows = [0]
    stop = threading.Event()
    writing = threading.Lock()

    def insert(n: int) -> None:
        # one writer at a time: versions are numbered in the order the rows commit (the
        # trickle and a burst run in two threads; numbering outside the lock let a later
        # version commit first, which read as an order break of the bridge)
        with writing, sqlite3.connect(db, timeout=30) as conn:
            batch = []
            for i in range(n):
                key = (rows[0] + i) % KEYS
                counter[key] = counter.get(key, 0) + 1
                batch.append((key, counter[key], "y" * 200))
            conn.executemany("INSERT INTO ledger (k, v, pad) VALUES (?, ?, ?)", batch)
            rows[0] += n

    def trickle() -> None:
        while not stop.is_set():
            insert(20)
            time.sleep(0.05)

    async def burst() -> None:
        await asyncio.to_thread(insert, 2500)

    insert(KEYS)
    await wait_stream_count(cluster, KEYS, bridge)
    writer = threading.Thread(target=trickle)
    writer.start()
    try:
        faults = await run_faults(cluster, burst, daemon_progress(cluster, bridge),
                                  cluster.node_of_client)
    finally:
        stop.set()
        writer.join()
    await wait_stream_count(cluster, rows[0], bridge)
    assert bridge.terminate() == 0
    assert len(faults) == 6
    stored = await stream_read(cluster, "cdc.erp.>")
    per_key: dict[int, list[int]] = {}
    ids = []
    for m in stored:
        after = m.body["data"]["after"]
        per_key.setdefault(after["k"], []).append(after["v"])
        ids.append(after["id"])
    assert_versions(per_key, {k: list(range(1, v + 1)) for k, v in counter.items()})
    assert ids == sorted(ids) and len(ids) == rows[0] == len(set(ids))  # the source's order
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == len(stored)


# -- init and stream set-up on a cluster -------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc_bridge.cli", *args], capture_output=True,
                          text=True, timeout=120)


async def test_init_creates_and_updates_the_replicated_stream(tmp_path: Path,
                                                              cluster: NatsCluster) -> None:
    def config(**nats: Any) -> Path:
        return write_config(tmp_path / "bridge.yaml", {
            "state_dir": str(tmp_path / "state"),
            "nats": cluster.nats_config(stream="CDC", subject_prefix="cdc", **nats),
            "adapters": [{"name": "erp", "type": "sql_poll",
                          "url": f"sqlite:///{tmp_path / 'x.db'}",
                          "tables": [{"name": "t", "mode": "incrementing",
                                      "incrementing_column": "id"}]}]})

    async def info() -> Any:
        async def ask(nc: Any) -> Any:
            return await nc.jetstream(timeout=5).stream_info("CDC")

        return await cluster._call(ask, 30)

    first = cli("init", "-c", str(config(replicas=1)))
    assert "stream: CDC created" in first.stdout, first.stdout + first.stderr
    assert "replicas 1" in first.stdout
    assert (await info()).config.num_replicas == 1
    # to R3 with placement in the cluster: updated in place, reported with its peers
    second = cli("init", "-c", str(config(replicas=3, placement={"cluster": "cdc"})))
    assert "stream: CDC updated to match the config" in second.stdout, second.stdout
    assert "replicas 3" in second.stdout
    await cluster.replicas_current("CDC", 60)
    got = await info()
    assert got.config.num_replicas == 3 and got.config.placement.cluster == "cdc"
    third = cli("init", "-c", str(config(replicas=3, placement={"cluster": "cdc"})))
    assert "stream: CDC already up to date" in third.stdout, third.stdout
    assert "CDC on cluster cdc, leader n" in third.stdout
    assert "3 of 3 replicas current, placement cdc" in third.stdout
    # a placement no server matches: a clear configuration error, not a hang
    bad = cli("init", "-c", str(config(replicas=3, placement={"tags": ["region:nowhere"]})))
    assert bad.returncode != 0
    assert "JetStream refused stream CDC" in bad.stdout + bad.stderr
