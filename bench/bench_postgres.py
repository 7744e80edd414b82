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
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench.common import (
    Pacer,
    bridge,
    bridge_config,
    emit,
    latency,
    publish_ceiling,
    read_stored,
    services,
    stream_count,
    vmhwm_mb,
    wait_log,
    wait_stored,
)
from cdc_bridge.kernel.events import ChangeEvent
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


def recvlogical(pg: PostgresServer, dsn: str, end_lsn: str) -> float:
    """Seconds pg_recvlogical takes to read slot ``bench_recv`` up to ``end_lsn``."""
    binary = pg.bindir / "pg_recvlogical"
    t0 = time.time()
    subprocess.run([str(binary), "-d", dsn, "--slot", "bench_recv", "--start",
                    "--endpos", end_lsn, "--no-loop", "-o", "proto_version=1",
                    "-o", "publication_names=bench_pub", "-f", "/dev/null"],
                   check=True, capture_output=True)
    return time.time() - t0


def bridge_sized_events(n: int) -> list[ChangeEvent]:
    """``n`` events shaped like the bridge's for a row of ``ev``."""
    return [ChangeEvent(adapter="shop", schema="public", table="ev", op="c",
                        position=f"0/{i:X}", key={"id": i},
                        after={"id": i, "customer": f"cust-{i % 97}", "amount": f"{i}.25",
                               "note": "note"}, txid=1234, ts_ms=1_795_000_000_000,
                        source_extra={"lsn": f"0/{i:X}", "snapshot": False})
            for i in range(n)]


def steady(dsn: str, rate: int, seconds: float, start: int) -> int:
    per_tx = 20
    pacer = Pacer(rate, per_tx, seconds)
    n = 0
    with psycopg.connect(dsn) as conn:
        while pacer.running():
            conn.execute(f"INSERT INTO ev SELECT g, 'c', 1, 'n' FROM "
                         f"generate_series({start + n}, {start + n + per_tx - 1}) g")
            conn.commit()
            n += per_tx
            time.sleep(pacer.pause_s())
    return n


def bench(args: argparse.Namespace) -> None:
    with services("bench-pg-", postgres=True) as env:
        assert env.postgres is not None
        pg, url, dsn = env.postgres, env.nats.url, env.postgres.dsn
        sql(dsn, TABLE_DDL, "CREATE PUBLICATION bench_pub FOR TABLE ev",
            "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
        adapter = {"name": "shop", "type": "postgres", "dsn": dsn, "tables": ["ev"],
                   "snapshot": "never", "publication": "bench_pub"}
        cfg = bridge_config(env.workdir, url, [adapter], nats_extra={"duplicate_window": "2m"},
                            log_level="WARNING")
        with bridge(env.workdir, cfg) as proc:
            wait_log(proc, "created replication slot", 30)
            sql(dsn, "SELECT pg_logical_emit_message(false, 'warmup', '')")
            time.sleep(1.0)

            # 1. bridge end to end, one transaction of --rows rows
            n = args.rows
            t_commit = insert_tx(dsn, 1, n)
            end_lsn = sql(dsn, "SELECT pg_current_wal_lsn()::text")[0][0]
            t_done = wait_stored(url, n, timeout_s=600, interval_s=0.02).done_at
            bridge_rate = n / (t_done - t_commit)
            print(f"bridge commit->PubAck: {n} rows in {t_done - t_commit:.2f}s = "
                  f"{bridge_rate:,.0f} events/s", flush=True)

            # 2. pg_recvlogical on the same transaction (second slot)
            recv_s = recvlogical(pg, dsn, end_lsn)
            recv_rate = n / recv_s
            print(f"pg_recvlogical same data: {recv_s:.2f}s = {recv_rate:,.0f} events/s",
                  flush=True)

            # 3. bare nats publish_async, the bridge's bodies and message ids
            events = bridge_sized_events(n)
            nats_rate = asyncio.run(publish_ceiling(
                url, [e.encode() for e in events], msg_ids=[e.id for e in events],
                subject="bare.shop.public.ev.c", stream="BARE"))
            del events
            print(f"bare nats-py publish_async: {nats_rate:,.0f} msg/s", flush=True)
            ceiling = min(recv_rate, nats_rate)
            ratio = bridge_rate / ceiling
            lower = "pg_recvlogical" if recv_rate < nats_rate else "nats"
            print(f"ratio bridge / lower ceiling ({lower}): {ratio:.2f}; "
                  f"bridge / pg_recvlogical {bridge_rate / recv_rate:.2f}; "
                  f"bridge / nats {bridge_rate / nats_rate:.2f}", flush=True)
            emit("postgres e2e events/s (one tx)", round(bridge_rate), "events/s",
                 ceiling=round(ceiling), ratio=round(ratio, 3))

            # 4. steady-rate latency: commit ts_ms -> JetStream stored timestamp
            before = stream_count(url)
            written = steady(dsn, args.rate, args.seconds, n + 1)
            wait_stored(url, before + written, timeout_s=120, interval_s=0.02)
            lat = latency(m.stored_at * 1000 - json.loads(m.data)["data"]["source"]["ts_ms"]
                          for m in read_stored(url, start_seq=before + 1))
            print(f"commit->PubAck latency at {args.rate} rows/s ({lat.n} rows): "
                  f"p50 {lat.p50_ms:.1f} ms, p99 {lat.p99_ms:.1f} ms", flush=True)
            emit(f"postgres latency p50 @{args.rate}/s", round(lat.p50_ms, 1), "ms")
            emit(f"postgres latency p99 @{args.rate}/s", round(lat.p99_ms, 1), "ms")

            # 5. one huge transaction: peak RSS of the bridge
            if args.big_rows:
                assert proc.proc is not None
                rss_before = vmhwm_mb(proc.proc.pid)
                before = stream_count(url)
                t_commit = insert_tx(dsn, n + written + 1, args.big_rows)
                t_done = wait_stored(url, before + args.big_rows, timeout_s=3600,
                                     interval_s=0.02).done_at
                rss = vmhwm_mb(proc.proc.pid)
                rate = args.big_rows / (t_done - t_commit)
                print(f"{args.big_rows}-row transaction: {t_done - t_commit:.1f}s = "
                      f"{rate:,.0f} events/s; bridge peak RSS (VmHWM) {rss:.0f} MB "
                      f"(before it: {rss_before:.0f} MB)", flush=True)
                emit(f"postgres {args.big_rows}-row tx events/s", round(rate), "events/s",
                     peak_rss_mb=round(rss, 1))
            assert proc.terminate() == 0, proc.log()[-2000:]


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
