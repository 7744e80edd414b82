"""Benchmark: PostgreSQL logical replication -> bridge -> JetStream, against two ceilings.

Starts its own PostgreSQL 15 (``wal_level=logical``) and nats-server (``tests/services``)
and, in the same run:

1. ``bridge``: the bridge as a real process (``cdc-bridge run``, ``type: postgres``,
   SQLite outbox) streaming; one transaction inserts ``--rows`` small rows; events/s
   from its commit to the last PubAck (the stream's message count reaching ``--rows``).
2. ``pg_recvlogical``: PostgreSQL's own client reading the same transaction from a
   second pgoutput slot created before it (same publication), to the end LSN, output
   discarded: the source ceiling.
3. ``nats``: a bare nats-py ``publish_async`` loop of the same number of messages of
   the bridge's size with ``Nats-Msg-Id`` headers, awaiting every PubAck: the sink
   ceiling. The ratio printed is bridge / the lower ceiling.
4. ``latency``: commit->PubAck p50/p99 at a steady ``--rate`` rows/s (transactions of
   20 rows every 10 ms) for ``--seconds``: commit time is ``data.source.ts_ms`` (the
   server's commit timestamp), PubAck time the stream's stored timestamp.
5. ``big``: peak RSS (VmHWM) of the bridge process after one ``--big-rows``-row
   transaction went through (``0`` skips it).

    .venv/bin/python bench/bench_postgres.py [--rows 100000] [--big-rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
import psycopg
from nats.js import api

from bridge.events import ChangeEvent
from tests.helpers import BridgeProcess, write_config
from tests.services.nats_server import NatsServer
from tests.services.postgres import PostgresServer

TABLE_DDL = "CREATE TABLE ev (id bigint PRIMARY KEY, customer text, amount numeric, note text)"


def sql(dsn: str, *statements: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = None
        for st in statements:
            cur = conn.execute(st)
            rows = cur.fetchall() if cur.description else rows
        return rows


def insert_tx(dsn: str, start: int, n: int) -> float:
    """One transaction of ``n`` rows; returns the wall-clock time of its commit."""
    with psycopg.connect(dsn) as conn:
        conn.execute(f"INSERT INTO ev SELECT g, 'cust-' || (g % 97), (g || '.25')::numeric, 'note' "
                     f"FROM generate_series({start}, {start + n - 1}) g")
        conn.commit()
        return time.time()


async def _js_count(url: str, stream: str = "CDC") -> int:
    nc = await nats.connect(url)
    try:
        try:
            info = await nc.jetstream().stream_info(stream)
        except Exception:
            return 0
        return int(info.state.messages)
    finally:
        await nc.close()


def wait_count(url: str, n: int, timeout_s: float) -> float:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if asyncio.run(_js_count(url)) >= n:
            return time.time()
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {n} messages")


def bridge_config(tmp: Path, nats_url: str, dsn: str) -> Path:
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc",
                 "duplicate_window": "2m"},
        "log": {"level": "WARNING"},
        "adapters": [{"name": "shop", "type": "postgres", "dsn": dsn, "tables": ["ev"],
                      "snapshot": "never", "publication": "bench_pub"}],
    })


def recvlogical(pg: PostgresServer, dsn: str, end_lsn: str) -> float:
    """Seconds pg_recvlogical takes to read slot ``bench_recv`` up to ``end_lsn``."""
    binary = pg.bindir / "pg_recvlogical"
    t0 = time.time()
    subprocess.run([str(binary), "-d", dsn, "--slot", "bench_recv", "--start",
                    "--endpos", end_lsn, "--no-loop", "-o", "proto_version=1",
                    "-o", "publication_names=bench_pub", "-f", "/dev/null"],
                   check=True, capture_output=True)
    return time.time() - t0


async def bare_nats(url: str, n: int) -> float:
    """events/s of a bare publish_async loop of ``n`` bridge-sized messages."""
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    await js.add_stream(api.StreamConfig(name="BARE", subjects=["bare.>"],
                                         duplicate_window=120))
    bodies = [ChangeEvent(adapter="shop", schema="public", table="ev", op="c",
                          position=f"0/{i:X}", key={"id": i},
                          after={"id": i, "customer": f"cust-{i % 97}", "amount": f"{i}.25",
                                 "note": "note"}, txid=1234, ts_ms=1_795_000_000_000,
                          source_extra={"lsn": f"0/{i:X}", "snapshot": False})
              for i in range(n)]
    encoded = [(b.id, b.encode()) for b in bodies]
    t0 = time.time()
    for msg_id, body in encoded:
        await js.publish_async("bare.shop.public.ev.c", body, headers={"Nats-Msg-Id": msg_id})
    await js.publish_async_completed()
    elapsed = time.time() - t0
    await nc.close()
    return n / elapsed


async def _stored(url: str) -> list[tuple[int, float]]:
    """(commit ts_ms, stored time) of every message in CDC."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("cdc.>", stream="CDC", config=api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL))
    out: list[tuple[int, float]] = []
    while True:
        try:
            msgs = await sub.fetch(2000, timeout=1.0)
        except (nats.errors.TimeoutError, TimeoutError):
            break
        for m in msgs:
            ts = json.loads(m.data)["data"]["source"]["ts_ms"]
            out.append((ts, m.metadata.timestamp.timestamp()))
    await nc.close()
    return out


def steady(dsn: str, rate: int, seconds: float, start: int) -> int:
    per_tx = 20
    interval = per_tx / rate
    n = 0
    with psycopg.connect(dsn) as conn:
        t_next = time.time()
        end = t_next + seconds
        while time.time() < end:
            conn.execute(f"INSERT INTO ev SELECT g, 'c', 1, 'n' FROM "
                         f"generate_series({start + n}, {start + n + per_tx - 1}) g")
            conn.commit()
            n += per_tx
            t_next += interval
            time.sleep(max(0.0, t_next - time.time()))
    return n


def vmhwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bench(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    pg = PostgresServer()
    pg.start()
    ns = NatsServer(tmp / "nats")
    ns.start()
    bridge: BridgeProcess | None = None
    try:
        dsn = pg.dsn
        sql(dsn, TABLE_DDL, "CREATE PUBLICATION bench_pub FOR TABLE ev",
            "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
        bridge = BridgeProcess(bridge_config(tmp, ns.url, dsn), tmp / "bridge.log")
        bridge.start()
        deadline = time.time() + 30
        while "created replication slot" not in bridge.log() and time.time() < deadline:
            time.sleep(0.1)
        sql(dsn, "SELECT pg_logical_emit_message(false, 'warmup', '')")
        time.sleep(1.0)

        # 1. bridge end to end, one transaction of --rows rows
        n = args.rows
        t_commit = insert_tx(dsn, 1, n)
        end_lsn = sql(dsn, "SELECT pg_current_wal_lsn()::text")[0][0]
        t_done = wait_count(ns.url, n, timeout_s=600)
        bridge_rate = n / (t_done - t_commit)
        print(f"bridge commit->PubAck: {n} rows in {t_done - t_commit:.2f}s = "
              f"{bridge_rate:,.0f} events/s", flush=True)

        # 2. pg_recvlogical on the same transaction (second slot)
        recv_s = recvlogical(pg, dsn, end_lsn)
        recv_rate = n / recv_s
        print(f"pg_recvlogical same data: {recv_s:.2f}s = {recv_rate:,.0f} events/s",
              flush=True)

        # 3. bare nats publish_async
        nats_rate = asyncio.run(bare_nats(ns.url, n))
        print(f"bare nats-py publish_async: {nats_rate:,.0f} msg/s", flush=True)
        ceiling = min(recv_rate, nats_rate)
        ratio = bridge_rate / ceiling
        lower = "pg_recvlogical" if recv_rate < nats_rate else "nats"
        print(f"ratio bridge / lower ceiling ({lower}): {ratio:.2f}; "
              f"bridge / pg_recvlogical {bridge_rate / recv_rate:.2f}; "
              f"bridge / nats {bridge_rate / nats_rate:.2f}", flush=True)
        print("BENCH " + json.dumps({"metric": "postgres e2e events/s (one tx)",
                                     "value": round(bridge_rate), "unit": "events/s",
                                     "ceiling": round(ceiling), "ratio": round(ratio, 3)}))

        # 4. steady-rate latency
        before = asyncio.run(_js_count(ns.url))
        written = steady(dsn, args.rate, args.seconds, n + 1)
        wait_count(ns.url, before + written, timeout_s=120)
        stored = asyncio.run(_stored(ns.url))[before:]
        lat = sorted(stored_s * 1000 - ts for ts, stored_s in stored)
        p50 = statistics.median(lat)
        p99 = lat[int(len(lat) * 0.99) - 1]
        print(f"commit->PubAck latency at {args.rate} rows/s ({len(lat)} rows): "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
        print("BENCH " + json.dumps({"metric": f"postgres latency p50 @{args.rate}/s",
                                     "value": round(p50, 1), "unit": "ms"}))
        print("BENCH " + json.dumps({"metric": f"postgres latency p99 @{args.rate}/s",
                                     "value": round(p99, 1), "unit": "ms"}))

        # 5. one huge transaction: peak RSS of the bridge
        if args.big_rows:
            assert bridge.proc is not None
            rss_before = vmhwm_mb(bridge.proc.pid)
            before = asyncio.run(_js_count(ns.url))
            start = n + written + 1
            t_commit = insert_tx(dsn, start, args.big_rows)
            t_done = wait_count(ns.url, before + args.big_rows, timeout_s=3600)
            rss = vmhwm_mb(bridge.proc.pid)
            rate = args.big_rows / (t_done - t_commit)
            print(f"{args.big_rows}-row transaction: {t_done - t_commit:.1f}s = {rate:,.0f} "
                  f"events/s; bridge peak RSS (VmHWM) {rss:.0f} MB "
                  f"(before it: {rss_before:.0f} MB)", flush=True)
            print("BENCH " + json.dumps({"metric": f"postgres {args.big_rows}-row tx events/s",
                                         "value": round(rate), "unit": "events/s",
                                         "peak_rss_mb": round(rss, 1)}))
        assert bridge.terminate() == 0, bridge.log()[-2000:]
    finally:
        if bridge is not None and bridge.alive():
            bridge.kill9()
        ns.stop()
        pg.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15.0)
    bench(parser.parse_args())


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
