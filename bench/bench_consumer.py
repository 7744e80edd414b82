"""Benchmark: the client library's Consumer against a bare nats-py pull-consumer loop.

Starts its own nats-server (JetStream, file storage) from ``tests/services``, stores
``--events`` change events over ``--keys`` row keys in one stream, and in the same run,
on the same stream, measures events/s from start until every event is acknowledged:

1. ``bare``: a plain nats-py loop (durable pull consumer, ``fetch(100)``, decode the
   JSON, ``ack`` each): the ceiling for one Python process;
2. ``consumer c=1`` and ``consumer c=16``: :class:`cdc_bridge.client.Consumer` with a
   trivial handler and the in-memory seen-store (the per-key queues, the order gate,
   dedup, in-progress keep-alive all on), at concurrency 1 and 16;
3. ``consumer c=16 sqlite``: the same with :class:`SqliteSeenStore` (one transaction per
   event, WAL, fsync per commit as configured by SQLite's defaults).

Each measurement uses a fresh durable. Rounds alternate so a noisy neighbour hits all
alike; figures are medians.

    .venv/bin/python bench/bench_consumer.py [--events 20000] [--keys 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
import orjson
from nats.js import api

from bench.common import emit, services
from cdc_bridge.client.consumer import Consumer, ConsumerSettings, Event
from cdc_bridge.client.seen import MemorySeenStore, SeenStore, SqliteSeenStore
from cdc_bridge.kernel.events import ChangeEvent


async def fill(url: str, events: int, keys: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    await js.add_stream(api.StreamConfig(name="CDC", subjects=["cdc.>"]))
    for i in range(events):
        ev = ChangeEvent(adapter="erp", table="orders", op="u", position=f"p:{i}",
                         key={"id": i % keys}, after={"id": i % keys, "v": i,
                                                      "note": "lorem ipsum " * 8},
                         ts_ms=1_700_000_000_000 + i)
        await js.publish_async(ev.subject("cdc"), ev.encode(), headers={"Nats-Msg-Id": ev.id})
    await js.publish_async_completed()
    await nc.close()


async def bare(url: str, events: int, durable: str) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("cdc.>", durable=durable, stream="CDC",
                                  config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT,
                                                            max_ack_pending=1000))
    done = 0
    start = time.perf_counter()
    while done < events:
        try:
            msgs = await sub.fetch(100, timeout=1.0)
        except TimeoutError:
            continue
        for m in msgs:
            orjson.loads(m.data)
            await m.ack()
            done += 1
    elapsed = time.perf_counter() - start
    await nc.flush()
    await nc.close()
    return events / elapsed


async def library(url: str, events: int, durable: str, concurrency: int,
                  seen: SeenStore) -> float:
    async def handle(event: Event) -> None:
        return None

    settings = ConsumerSettings(servers=[url], durable=durable, filter_subject="cdc.>",
                                concurrency=concurrency, batch=100)
    consumer = Consumer(settings, handle, seen)
    start = time.perf_counter()
    task = asyncio.create_task(consumer.run(fetch_timeout_s=0.5))
    while consumer.stats.handled + consumer.stats.duplicates < events:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    consumer.stop()
    await task
    return events / elapsed


async def main_async(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    with services("bench-consumer-") as svc:
        url = svc.nats.url
        await fill(url, args.events, args.keys)
        results: dict[str, list[float]] = {"bare": [], "c1": [], "c16": [], "c16sqlite": []}
        for r in range(args.rounds):
            results["bare"].append(await bare(url, args.events, f"bare{r}"))
            results["c1"].append(await library(url, args.events, f"c1_{r}", 1,
                                               MemorySeenStore(args.events * 2)))
            results["c16"].append(await library(url, args.events, f"c16_{r}", 16,
                                                MemorySeenStore(args.events * 2)))
            with tempfile.TemporaryDirectory() as tmp:
                results["c16sqlite"].append(await library(
                    url, args.events, f"c16s_{r}", 16,
                    SqliteSeenStore(Path(tmp) / "seen.db", f"c16s_{r}")))
        ceiling = statistics.median(results["bare"])
        emit("consumer: bare nats-py pull loop", ceiling, "events/s")
        for name, label in (("c1", "consumer c=1 (memory store)"),
                            ("c16", "consumer c=16 (memory store)"),
                            ("c16sqlite", "consumer c=16 (sqlite store)")):
            value = statistics.median(results[name])
            emit(f"consumer: {label}", value, "events/s", ceiling=ceiling,
                 ratio=value / ceiling)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
