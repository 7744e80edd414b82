"""Benchmark: outbox append + relay to JetStream, against a bare nats-py publish loop.

Starts its own nats-server (JetStream, file storage) from ``tests/services`` and, in the
same run and on the same server, measures:

1. ``bare``: a plain nats-py ``publish_async`` loop (``Nats-Msg-Id`` header, the same
   payloads), waiting for every PubAck: the ceiling for one Python process.
2. ``outbox+relay``: a producer appends the same messages to the outbox store in
   batches (as the daemon's capture path does, on the store's capture thread) while
   :class:`cdc_bridge.relay.relay.Relay` publishes them; events/s from the first append to the
   last PubAck.
3. ``drain``: the relay alone emptying a pre-filled outbox (capture already done).
4. ``latency``: append->PubAck p50/p99 at a steady rate (default 2,000 events/s, in
   transactions of 20 events every 10 ms).

Rounds alternate bare and relay so that a noisy neighbour hits both alike; the ratio
printed uses the median of each.

``--tracing`` adds, to every round and against the same ceiling (docs/tracing.md):
``before`` (bodies without ``traceparent`` and a publisher that adds no such header:
the relay as it was before trace context), then tracing on with OTLP export to a sink
process (:mod:`bench.otlp_sink`) at sample ratio 1 and at ``--sample-ratio``; plus the
capture side's cost per event (encoding with and without the traceparent, and the
capture/commit spans).

    .venv/bin/python bench/bench_relay.py [--events 100000] [--rounds 3] [--store sqlite]
                                          [--tracing [--sample-ratio 0.01]]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_tracing
from bench.common import Pacer, emit, latency, publish_ceiling, relay_to_end, services
from cdc_bridge import metrics
from cdc_bridge.config import NatsConfig, OutboxConfig
from cdc_bridge.kernel.events import ChangeEvent
from cdc_bridge.outbox.base import OutboxMessage, OutboxStore
from cdc_bridge.outbox.factory import open_store
from cdc_bridge.outbox.runner import AsyncStore
from cdc_bridge.relay.publisher import Publisher
from cdc_bridge.relay.relay import Relay
from cdc_bridge.relay.tracing import Tracing


def make_messages(n: int, run: str) -> list[OutboxMessage]:
    """Realistic CloudEvents bodies (~600 bytes) of inserts into one table."""
    out = []
    for i in range(n):
        ev = ChangeEvent(adapter="erp", schema="public", table="invoices", op="c",
                         position=f"{run}:{i}", key={"id": i},
                         after={"id": i, "customer": f"cust-{i % 97}", "amount": f"{i}.25",
                                "note": "lorem ipsum dolor sit amet " * 4, "status": "open"},
                         ts_ms=1_795_000_000_000 + i)
        out.append(OutboxMessage(ev.id, ev.subject("cdc"), ev.encode(), None, 0))
    return out


async def bare(url: str, msgs: list[OutboxMessage], stream: str) -> float:
    """The ceiling on the same messages: bodies, message ids, their (one) subject."""
    subject = stream.lower() + msgs[0].subject[3:]
    return await publish_ceiling(url, [m.payload for m in msgs],
                                 msg_ids=[m.msg_id for m in msgs], subject=subject,
                                 stream=stream)


def open_bench_store(kind: str, tmp: Path, pg_url: str | None) -> OutboxStore:
    if kind == "postgres":
        assert pg_url
        return open_store(pg_url)
    return open_store(f"sqlite:///{tmp / 'outbox.db'}")


async def relay_run(url: str, store: OutboxStore, msgs: list[OutboxMessage], stream: str,
                    batch: int, prefill: bool, *, publisher_cls: type[Publisher] = Publisher,
                    tracing: Tracing | None = None) -> float:
    astore = AsyncStore(store)
    cfg = NatsConfig(url=url, stream=stream, subject_prefix="cdc")
    publisher = publisher_cls(cfg)
    relay = Relay(astore, publisher, OutboxConfig(relay_batch=batch, max_in_flight=4000),
                  tracing=tracing)

    async def produce() -> None:
        for i in range(0, len(msgs), batch):
            now = int(time.time() * 1000)
            chunk = [OutboxMessage(m.msg_id, m.subject, m.payload, None, now)
                     for m in msgs[i:i + batch]]
            await astore.append("erp", chunk, {"pos": i})

    if prefill:
        await produce()
    await publisher.connect()
    start = time.perf_counter()
    task = asyncio.create_task(relay.run())
    if not prefill:
        await produce()
    rate = await relay_to_end(relay, task, len(msgs), start)
    astore.close()
    return rate


class Recorder:
    """Stands in for the latency histogram: keeps every observation (any adapter)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def labels(self, *_: str) -> Recorder:
        return self

    def observe(self, value: float) -> None:
        self.values.append(value)


async def latency_run(url: str, store: OutboxStore, rate: int, seconds: float,
                      stream: str) -> dict[str, float]:
    recorder = Recorder()
    original = metrics.PUBLISH_LATENCY
    metrics.PUBLISH_LATENCY = recorder  # type: ignore[assignment]
    astore = AsyncStore(store)
    publisher = Publisher(NatsConfig(url=url, stream=stream, subject_prefix="cdc"))
    relay = Relay(astore, publisher)
    task = asyncio.create_task(relay.run())
    per_tx = 20
    msgs = make_messages(int(rate * seconds), "lat")
    pacer = Pacer(rate, per_tx)  # started after building the messages: no catch-up burst
    try:
        for i in range(0, len(msgs), per_tx):
            now = int(time.time() * 1000)
            chunk = [OutboxMessage(m.msg_id, m.subject, m.payload, None, now)
                     for m in msgs[i:i + per_tx]]
            await astore.append("erp", chunk, None)
            await asyncio.sleep(pacer.pause_s())
        while relay.stats.published < len(msgs):
            await asyncio.sleep(0.01)
    finally:
        relay.stop()
        await task
        metrics.PUBLISH_LATENCY = original
        await publisher.close()
        astore.close()
    lat = latency(v * 1000 for v in recorder.values)
    return {"n": lat.n, "p50_ms": lat.p50_ms, "p99_ms": lat.p99_ms, "max_ms": lat.max_ms}


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, list[float]] = {"bare": [], "relay": [], "drain": []}
    with services("bench-relay-") as env, bench_tracing.sink(args.tracing) as sink_url:
        url, tmp = env.nats.url, env.workdir
        print(f"nats-server {url}; {args.events} events of "
              f"{len(make_messages(1, 'x')[0].payload)} bytes; store {args.store}")
        for r in range(args.rounds):
            msgs = make_messages(args.events, f"r{r}")
            results["bare"].append(await bare(url, msgs, f"BARE{r}"))
            if args.tracing:
                await bench_tracing.relay_variants(
                    results, r, msgs, sink_url, args.sample_ratio,
                    lambda name, m, r=r, **kw: relay_run(
                        url, open_bench_store(args.store, tmp / f"{name}{r}", args.pg_url),
                        m, f"{name.upper()}{r}", args.batch, prefill=False, **kw))
            store = open_bench_store(args.store, tmp / f"r{r}", args.pg_url)
            results["relay"].append(await relay_run(url, store, msgs, f"RELAY{r}",
                                                    args.batch, prefill=False))
            store = open_bench_store(args.store, tmp / f"d{r}", args.pg_url)
            results["drain"].append(await relay_run(url, store, msgs, f"DRAIN{r}",
                                                    args.batch, prefill=True))
            print(f"round {r + 1}: bare {results['bare'][-1]:,.0f}/s  "
                  f"outbox+relay {results['relay'][-1]:,.0f}/s  "
                  f"drain {results['drain'][-1]:,.0f}/s")
        # one more ceiling after the last figure, then the best of them: every figure has
        # a ceiling measured before and after it, and a depressed one cannot flatter it
        results["bare"].append(await bare(url, make_messages(args.events, "end"), "BAREEND"))
        med = {k: statistics.median(v) for k, v in results.items()}
        med["bare"] = max(results["bare"])
        print(f"best bare {med['bare']:,.0f}/s  median outbox+relay {med['relay']:,.0f}/s "
              f"(ratio {med['relay'] / med['bare']:.2f})  drain {med['drain']:,.0f}/s "
              f"(ratio {med['drain'] / med['bare']:.2f})")
        rounds = f"median of {args.rounds}, {args.store}"
        emit(f"outbox+relay events/s ({rounds})", round(med["relay"]), "events/s",
             ceiling=round(med["bare"]), ratio=round(med["relay"] / med["bare"], 3))
        emit(f"relay drain of a filled outbox events/s ({rounds})", round(med["drain"]),
             "events/s", ceiling=round(med["bare"]), ratio=round(med["drain"] / med["bare"], 3))
        emit(f"bare publish_async msg/s (best of {args.rounds + 1}, before and after)",
             round(med["bare"]), "msg/s")
        if args.tracing:
            bench_tracing.report(med, rounds, args.sample_ratio)
            bench_tracing.capture_costs(make_messages, sink_url, args.sample_ratio)
        if args.latency_seconds > 0:
            store = open_bench_store(args.store, tmp / "lat", args.pg_url)
            lat: dict[str, Any] = await latency_run(url, store, args.rate,
                                                    args.latency_seconds, "LAT")
            print(f"latency at {args.rate}/s for {args.latency_seconds:g}s: "
                  f"p50 {lat['p50_ms']:.1f} ms  p99 {lat['p99_ms']:.1f} ms  "
                  f"max {lat['max_ms']:.1f} ms  ({lat['n']} events)")
            for q in ("p50", "p99", "max"):
                emit(f"relay append->PubAck latency {q} @{args.rate}/s",
                     round(lat[f"{q}_ms"], 2), "ms")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-url", default=None, help="postgresql://... for --store postgres")
    p.add_argument("--rate", type=int, default=2000)
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--tracing", action="store_true",
                   help="compare the relay before trace context, and with tracing on")
    p.add_argument("--sample-ratio", type=float, default=0.01,
                   help="the sampled tracing run's tracing.sample_ratio")
    asyncio.run(main(p.parse_args()))
