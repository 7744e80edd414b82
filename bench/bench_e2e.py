"""Benchmark: end-to-end latency and throughput over time, PostgreSQL -> bridge -> JetStream.

Starts its own nats-server and PostgreSQL (tests/services, free ports, temp dirs), runs
``cdc-bridge run`` as a real process with a ``type: postgres`` adapter, and subscribes
to ``cdc.>`` on the server, timing every arrival:

1. steady: a writer inserts ``--rate`` rows/s (transactions of 10) for ``--seconds``;
   each row carries the writer's wall clock at INSERT, so arrival minus that is the
   whole path's latency (commit, WAL decode, outbox, relay, PubAck, delivery);
2. burst: one transaction of ``--rows`` rows; arrivals per 500 ms give throughput over
   time, and rows / (last arrival - commit) the sustained rate;
3. ceiling: a bare nats-py ``publish_async`` loop of as many messages of the same size
   on the same server, for the ratio;
4. peak RSS (VmHWM) of the bridge process, read from /proc before it stops.

Output: human lines, then ``BENCH {json}`` per figure and ``BENCH_SERIES {json}`` for
plots (the format ``bench/run_all.py`` reads).

    .venv/bin/python bench/bench_e2e.py [--rows 100000] [--rate 2000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
import orjson
import psycopg

from bench.common import (
    Pacer,
    bridge,
    bridge_config,
    emit,
    emit_series,
    latency,
    publish_ceiling,
    services,
    vmhwm_mb,
)
from tests.helpers import BridgeProcess


class Arrivals:
    """A core subscription on ``cdc.>`` recording (arrival s, writer t_ms, id) per event."""

    def __init__(self) -> None:
        self.items: list[tuple[float, int | None, int]] = []

    async def handler(self, msg: Any) -> None:
        now = time.time()
        after = orjson.loads(msg.data)["data"]["after"] or {}
        self.items.append((now, after.get("t_ms"), int(after.get("id", 0))))

    def count_from(self, first_id: int) -> int:
        return sum(1 for _, _, i in self.items if i >= first_id)


def steady_writer(dsn: str, rate: float, seconds: float, first_id: int) -> int:
    n, per_tx = first_id, 10
    pacer = Pacer(rate, per_tx, seconds)
    with psycopg.connect(dsn, autocommit=False) as conn:
        while pacer.running():
            t_ms = int(time.time() * 1000)
            conn.cursor().executemany(
                "INSERT INTO bench_e2e (id, t_ms, payload) VALUES (%s, %s, %s)",
                [(i, t_ms, "x" * 100) for i in range(n, n + per_tx)])
            conn.commit()
            n += per_tx
            time.sleep(pacer.pause_s())
    return n - first_id


async def wait_count(arr: Arrivals, first_id: int, want: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while arr.count_from(first_id) < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {arr.count_from(first_id)} of {want} events arrived")
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace, nats_url: str, proc: BridgeProcess, dsn: str) -> None:
    nc = await nats.connect(nats_url)
    arr = Arrivals()
    await nc.subscribe("cdc.>", cb=arr.handler, pending_msgs_limit=-1, pending_bytes_limit=-1)
    proc.start()
    with psycopg.connect(dsn, autocommit=True) as conn:  # warm-up: the slot exists once seen
        deadline, attempt = time.monotonic() + 60, 0
        while not arr.items:
            attempt += 1
            conn.execute("INSERT INTO bench_e2e VALUES (%s, NULL, 'warm')", (-attempt,))
            await asyncio.sleep(0.5)
            if time.monotonic() > deadline:
                raise TimeoutError("the bridge never delivered the warm-up row")
    # 1. steady
    written = await asyncio.to_thread(steady_writer, dsn, args.rate, args.seconds, 1)
    await wait_count(arr, 1, written, 120)
    lat_ms = sorted((a - t / 1000) * 1000 for a, t, i in arr.items if i >= 1 and t is not None)
    lat = latency(lat_ms)
    print(f"steady {args.rate:.0f} rows/s for {args.seconds:.0f}s: {written} events; latency "
          f"p50 {lat.p50_ms:.1f} ms, p99 {lat.p99_ms:.1f} ms, max {lat.max_ms:.1f} ms")
    emit("e2e latency p50 (postgres, steady)", round(lat.p50_ms, 2), "ms")
    emit("e2e latency p99 (postgres, steady)", round(lat.p99_ms, 2), "ms")
    step = max(1, len(lat_ms) // 2000)
    emit_series(f"postgres steady {args.rate:.0f}/s", "latency",
                [round(x, 2) for x in lat_ms[::step]])
    # 2. burst
    first = 10_000_000
    with psycopg.connect(dsn, autocommit=True) as conn:
        t_commit = time.time()
        conn.execute("INSERT INTO bench_e2e (id, t_ms, payload) SELECT g, NULL, repeat('y', 100)"
                     " FROM generate_series(%s, %s) g", (first, first + args.rows - 1))
        t_commit = (t_commit + time.time()) / 2
    await wait_count(arr, first, args.rows, 600)
    times = sorted(a for a, _, i in arr.items if i >= first)
    rate = args.rows / (times[-1] - t_commit)
    buckets: dict[int, int] = {}
    for a in times:
        b = int((a - t_commit) / 0.5)
        buckets[b] = buckets.get(b, 0) + 1
    series = [[round(b * 0.5, 2), c / 0.5] for b, c in sorted(buckets.items())]
    assert proc.proc is not None
    rss = vmhwm_mb(proc.proc.pid)
    # 3. ceiling: as many messages of the bridge's size (~460 B) on the same server
    ceil = await publish_ceiling(nats_url, 460, count=args.rows, subject="ceil.x",
                                 stream="CEIL")
    print(f"burst: one transaction of {args.rows} rows -> {rate:,.0f} events/s end to end; "
          f"bare publish_async {ceil:,.0f} msg/s; ratio {rate / ceil:.2f}; "
          f"bridge peak RSS {rss:.0f} MB")
    emit("e2e burst throughput (postgres, 1 tx)", round(rate), "events/s",
         ceiling=round(ceil), ratio=round(rate / ceil, 3), peak_rss_mb=round(rss, 1))
    emit_series(f"postgres burst {args.rows} rows", "throughput", series)
    await nc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows in the burst transaction")
    p.add_argument("--rate", type=float, default=2000.0, help="steady rows/s")
    p.add_argument("--seconds", type=float, default=15.0, help="steady phase length")
    args = p.parse_args()
    with services("bench-e2e-", postgres=True) as env:
        assert env.postgres is not None
        dsn = env.postgres.dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_e2e (id bigint PRIMARY KEY, t_ms bigint, "
                         "payload text)")
        adapter = {"name": "bench", "type": "postgres", "dsn": dsn,
                   "tables": ["public.bench_e2e"], "snapshot": "never"}
        cfg = bridge_config(env.workdir, env.nats.url, [adapter])
        with bridge(env.workdir, cfg, start=False) as proc:
            asyncio.run(run(args, env.nats.url, proc, dsn))


if __name__ == "__main__":
    threading.current_thread().name = "bench-e2e"
    main()
