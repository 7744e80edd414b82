"""Benchmark: the relay into a replicated stream on a local three-node JetStream cluster.

Starts three nats-server processes from deploy/nats/nats-cluster.conf (the test suite's
cluster, :mod:`tests.services.nats_cluster`) and measures, in the same run:

1. for R1 and R3 streams: ``bare``, a plain nats-py ``publish_async`` loop (the same
   ~600-byte bodies, ``Nats-Msg-Id``) into a fresh stream of that replica count,
   measured on the quiet cluster before and after the relay rounds, the better kept:
   the ceiling; ``outbox+relay`` (a producer appends to a SQLite outbox while the relay
   publishes, as in bench_relay.py), with the chain (``Nats-Expected-Last-Sequence``,
   the default) and without it, as a ratio of that ceiling;
2. recovery after each node fault kind, with the relay publishing a steady stream of
   changes into the R3 stream: seconds from the fault until a row appended right after
   it is acknowledged (stream leader step-down, the leader's node killed -9, a non-leader
   stopped, the node the relay is connected to killed);
3. with ``--order-runs N``: the fault run of tests/test_cluster.py (bursts, three
   step-downs, leader kill -9, non-leader stop, the relay's node kill -9) N times with
   the chain off and on: per-key order breaks found in the stream.

    .venv/bin/python bench/bench_cluster.py [--events 50000] [--rounds 2] [--order-runs 0]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
from nats.js import api

from bench.bench_relay import make_messages
from bench.common import emit, relay_to_end
from cdc_bridge.config import NatsConfig, OutboxConfig
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.outbox.factory import open_store
from cdc_bridge.outbox.runner import AsyncStore
from cdc_bridge.relay.publisher import Publisher
from cdc_bridge.relay.relay import Relay
from tests.services.nats_cluster import ClusterNode, NatsCluster

MAX_IN_FLIGHT = 4000


async def ceiling(cluster: NatsCluster, msgs: list[OutboxMessage], replicas: int,
                  stream: str) -> float:
    """msgs/s of a bare ``publish_async`` loop into a fresh stream of ``replicas``."""
    nc = await nats.connect(**cluster.connect_options, pending_size=64 << 20)
    try:
        js = nc.jetstream(publish_async_max_pending=MAX_IN_FLIGHT)
        subject = stream.lower() + ".x"
        await js.add_stream(api.StreamConfig(name=stream, subjects=[subject + ".>"],
                                             num_replicas=replicas, duplicate_window=600))
        await cluster.replicas_current(stream) if replicas > 1 else None
        start = time.perf_counter()
        for m in msgs:
            await js.publish_async(f"{subject}.{m.subject.rsplit('.', 1)[-1]}", m.payload,
                                   headers={"Nats-Msg-Id": m.msg_id})
        await js.publish_async_completed()
        elapsed = time.perf_counter() - start
        stored = (await js.stream_info(stream)).state.messages
        assert stored == len(msgs), f"ceiling stream holds {stored} of {len(msgs)}"
        await js.delete_stream(stream)
        return len(msgs) / elapsed
    finally:
        await nc.close()


def relay_for(cluster: NatsCluster, work: Path, stream: str, replicas: int, *,
              chain: bool = True, **nats_kw: Any) -> tuple[AsyncStore, Publisher, Relay]:
    store = AsyncStore(open_store(f"sqlite:///{work / (stream + '.db')}"))
    cfg = NatsConfig.model_validate(cluster.nats_config(
        stream=stream, subject_prefix=stream.lower(), replicas=replicas, **nats_kw))
    publisher = Publisher(cfg)
    relay = Relay(store, publisher, OutboxConfig(max_in_flight=MAX_IN_FLIGHT,
                                                 expect_last_sequence=chain))
    return store, publisher, relay


def rebased(msgs: list[OutboxMessage], prefix: str) -> list[OutboxMessage]:
    now = int(time.time() * 1000)
    return [OutboxMessage(m.msg_id, prefix + m.subject[3:], m.payload, None, now) for m in msgs]


async def relay_run(cluster: NatsCluster, work: Path, msgs: list[OutboxMessage], stream: str,
                    replicas: int, chain: bool) -> float:
    """events/s from the first append to the last PubAck (the producer runs alongside)."""
    store, publisher, relay = relay_for(cluster, work, stream, replicas, chain=chain)
    msgs = rebased(msgs, stream.lower())
    await publisher.connect()
    if replicas > 1:
        await cluster.replicas_current(stream)
    start = time.perf_counter()
    task = asyncio.create_task(relay.run())
    for i in range(0, len(msgs), 2000):
        await store.append("erp", msgs[i:i + 2000], {"pos": i})
    rate = await relay_to_end(relay, task, len(msgs), start)
    store.close()
    return rate


async def throughput(cluster: NatsCluster, work: Path, args: argparse.Namespace) -> None:
    for replicas in (1, 3):
        bare: list[float] = []
        runs: dict[bool, list[float]] = {True: [], False: []}
        msgs = make_messages(args.events, f"R{replicas}")
        bare.append(await ceiling(cluster, msgs, replicas, f"CEIL{replicas}A"))
        for r in range(args.rounds):
            for chain in (True, False):
                runs[chain].append(await relay_run(
                    cluster, work, make_messages(args.events, f"R{replicas}{r}{chain}"),
                    f"REL{replicas}{'C' if chain else 'N'}{r}", replicas, chain))
        bare.append(await ceiling(cluster, make_messages(args.events, f"B{replicas}"),
                                  replicas, f"CEIL{replicas}B"))
        top = max(bare)
        chained, plain = statistics.median(runs[True]), statistics.median(runs[False])
        print(f"R{replicas}: bare {bare[0]:,.0f} / {bare[1]:,.0f} msg/s (before/after); "
              f"outbox+relay chained {chained:,.0f}/s (ratio {chained / top:.2f}), "
              f"unchained {plain:,.0f}/s (ratio {plain / top:.2f})")
        label = f"R{replicas}, 3 local nodes, median of {args.rounds}"
        emit(f"cluster outbox+relay events/s ({label})", round(chained), "events/s",
             ceiling=round(top), ratio=round(chained / top, 3))
        emit(f"cluster outbox+relay without chain events/s ({label})", round(plain),
             "events/s", ceiling=round(top), ratio=round(plain / top, 3))
        emit(f"cluster bare publish_async msg/s (R{replicas}, better of before/after)",
             round(top), "msg/s")


# -- recovery after node faults -----------------------------------------------------------


class Recovery:
    """The relay publishing ``rate`` events/s into an R3 stream while nodes fail."""

    def __init__(self, cluster: NatsCluster, work: Path, rate: int) -> None:
        self.cluster = cluster
        self.rate = rate
        self.store, self.publisher, self.relay = relay_for(
            cluster, work, "RECOV", 3, ack_timeout="3s", retry_max="1s", connect_timeout="2s")
        self.counter = itertools.count()
        self.stop = asyncio.Event()

    async def append(self, n: int) -> None:
        now = int(time.time() * 1000)
        rows = [OutboxMessage(f"rc-{i}", "recov.erp._.t.u", b"{}" + b"." * 500, None, now)
                for i in (next(self.counter) for _ in range(n))]
        await self.store.append("erp", rows, None)

    async def trickle(self) -> None:
        while not self.stop.is_set():
            await self.append(max(1, self.rate // 50))
            await asyncio.sleep(0.02)

    def connected(self) -> ClusterNode:
        nc = self.publisher.nc
        port = nc.connected_url.port if nc is not None and nc.connected_url else None
        return next(n for n in self.cluster.nodes if n.port == port)

    async def victim(self, kind: str) -> ClusterNode | None:
        leader = await self.cluster.leader("RECOV")
        if kind == "leader kill -9":
            return self.cluster.node(leader)
        if kind == "non-leader stop":
            return next(n for n in self.cluster.nodes
                        if n.name != leader and n is not self.connected())
        if kind == "kill -9 of the relay's node":
            return self.connected()
        return None

    async def measure(self, kind: str, task: asyncio.Task[None]) -> None:
        """Seconds from the fault until a row appended right after it is acknowledged."""
        await self.cluster.replicas_current("RECOV")
        await asyncio.sleep(1.0)
        node = await self.victim(kind)
        t0 = time.perf_counter()
        if node is None:
            await self.cluster.step_down("RECOV")
        elif kind == "non-leader stop":
            node.stop()
        else:
            node.kill()
        await self.append(1)
        probe = self.relay._acked_seq + (await self.store.stats()).pending
        while self.relay._acked_seq < probe:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        took = time.perf_counter() - t0
        print(f"recovery after {kind}: {took:.2f}s")
        emit(f"cluster relay recovery after {kind} (R3, {self.rate}/s)", round(took, 2), "s")
        if node is not None:
            node.start()
            await asyncio.to_thread(self.cluster.wait_healthy, 60)

    async def run(self) -> None:
        task = asyncio.create_task(self.relay.run())
        writer = asyncio.create_task(self.trickle())
        try:
            await self.append(10)
            while self.relay._acked_seq < 10:
                await asyncio.sleep(0.01)
            for kind in ("leader step-down", "leader kill -9", "non-leader stop",
                         "kill -9 of the relay's node"):
                await self.measure(kind, task)
        finally:
            self.stop.set()
            await writer
            self.relay.stop()
            await task
            await self.publisher.close()
            self.store.close()


async def order_runs(base: Path, runs: int) -> None:
    from tests.test_cluster import relay_through_faults

    for chain in (False, True):
        breaks = faults = 0
        for i in range(runs):
            work = base / f"order-{chain}-{i}"
            work.mkdir(parents=True)
            cluster = NatsCluster(work / "cluster")
            cluster.start()
            try:
                per_key, _, _, _ = await relay_through_faults(work, cluster, chain=chain)
            finally:
                for node in cluster.nodes:
                    node.kill()
            faults += 6
            breaks += sum(1 for vs in per_key.values() for a, b in itertools.pairwise(vs)
                          if b <= a)
        state = "on" if chain else "off"
        print(f"chain {state}: {breaks} per-key order breaks in {faults} faults")
        emit(f"cluster per-key order breaks, chain {state} ({faults} faults)", breaks, "breaks")


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)
    base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        cluster = NatsCluster(base / "cluster")
        cluster.start()
        try:
            print(f"3-node cluster {', '.join(cluster.urls)}; {args.events} events of "
                  f"{len(make_messages(1, 'x')[0].payload)} bytes")
            await throughput(cluster, base, args)
            if args.recovery:
                await Recovery(cluster, base, args.rate).run()
        finally:
            cluster.stop()
        if args.order_runs:
            await order_runs(base, args.order_runs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rate", type=int, default=2000, help="events/s during the fault runs")
    p.add_argument("--no-recovery", dest="recovery", action="store_false")
    p.add_argument("--order-runs", type=int, default=0)
    asyncio.run(main(p.parse_args()))
