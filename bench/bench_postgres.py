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
   ceiling, measured on a quiet server twice, before the bridge starts and after it has
   drained and sat idle (never while its processes are still busy), the better of the
   two taken: a depressed ceiling would flatter the ratio. The ratio printed is bridge /
   the lower ceiling.
   The same again for ``realistic`` rows (timestamptz, numeric, a 200-character text
   and a small jsonb document) in a second table, beside the small ones.
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
import os
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
REAL_DDL = ("CREATE TABLE ev_real (id bigint PRIMARY KEY, at timestamptz NOT NULL, "
            "amount numeric(14, 2) NOT NULL, note text, attrs jsonb)")
REAL_INSERT = ("INSERT INTO ev_real SELECT g, now() - (g || ' seconds')::interval, "
               "(g * 1.37)::numeric(14, 2), repeat(md5(g::text), 6) || 'abcdefgh', "
               "jsonb_build_object('sku', 'S-' || (g % 1000), 'qty', g % 17, 'tags', "
               "jsonb_build_array('a', 'b')) FROM generate_series({start}, {end}) g")


def sql(dsn: str, *statements: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = None
        for st in statements:
            cur = conn.execute(st)
            rows = cur.fetchall() if cur.description else rows
        return rows


def insert_tx(dsn: str, start: int, n: int, realistic: bool = False) -> float:
    """One transaction of ``n`` rows; returns the wall-clock time of its commit."""
    with psycopg.connect(dsn) as conn:
        if realistic:
            conn.execute(REAL_INSERT.format(start=start, end=start + n - 1))
        else:
            conn.execute(f"INSERT INTO ev SELECT g, 'cust-' || (g % 97), (g || '.25')::numeric,"
                         f" 'note' FROM generate_series({start}, {start + n - 1}) g")
        conn.commit()
        return time.time()


def quiet_ceiling(url: str, bodies: list[bytes], ids: list[str], name: str) -> float:
    """The bare publish loop on a quiet server: waits for the machine to settle first."""
    settle(2.0)
    return asyncio.run(publish_ceiling(url, bodies, msg_ids=ids, subject=f"bare.{name}",
                                       stream=f"BARE_{name.upper()}"))


def settle(seconds: float, max_wait_s: float = 30.0) -> None:
    """Wait until the last ``seconds`` used less than a fifth of one core (the bridge's
    processes idle, a previous step's server work done), at most ``max_wait_s``."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        busy0, t0 = _cpu_busy(), time.monotonic()
        time.sleep(seconds)
        if (_cpu_busy() - busy0) / (time.monotonic() - t0) < 0.2:
            return


def _cpu_busy() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def recvlogical(pg: PostgresServer, dsn: str, end_lsn: str) -> float:
    """Seconds pg_recvlogical takes to read slot ``bench_recv`` up to ``end_lsn``."""
    binary = pg.bindir / "pg_recvlogical"
    t0 = time.time()
    subprocess.run([str(binary), "-d", dsn, "--slot", "bench_recv", "--start",
                    "--endpos", end_lsn, "--no-loop", "-o", "proto_version=1",
                    "-o", "publication_names=bench_pub", "-f", "/dev/null"],
                   check=True, capture_output=True)
    return time.time() - t0


def realistic_events(dsn: str, n: int) -> list[ChangeEvent]:
    """``n`` events shaped like the bridge's for rows of ``ev_real`` (values as the
    source has them, read back from a sample row)."""
    row = sql(dsn, "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
              " amount::text, note, attrs::text FROM ev_real ORDER BY id LIMIT 1")[0]
    return [ChangeEvent(adapter="shop", schema="public", table="ev_real", op="c",
                        position=f"0/{i:X}", key={"id": i},
                        after={"id": i, "at": row[0], "amount": row[1], "note": row[2],
                               "attrs": json.loads(row[3])}, txid=1234,
                        ts_ms=1_795_000_000_000,
                        source_extra={"lsn": f"0/{i:X}", "snapshot": False})
            for i in range(n)]


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
        sql(dsn, TABLE_DDL, REAL_DDL, "CREATE PUBLICATION bench_pub FOR TABLE ev, ev_real",
            "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')")
        n = args.rows
        small = bridge_sized_events(n)
        small_bodies, small_ids = [e.encode() for e in small], [e.id for e in small]
        del small
        nats_before = quiet_ceiling(url, small_bodies, small_ids, "small_before")
        print(f"bare nats-py publish_async before the bridge: {nats_before:,.0f} msg/s",
              flush=True)
        adapter = {"name": "shop", "type": "postgres", "dsn": dsn, "tables": ["ev", "ev_real"],
                   "snapshot": "never", "publication": "bench_pub"}
        cfg = bridge_config(env.workdir, url, [adapter], nats_extra={"duplicate_window": "2m"},
                            log_level="WARNING")
        with bridge(env.workdir, cfg) as proc:
            wait_log(proc, "created replication slot", 30)
            sql(dsn, "SELECT pg_logical_emit_message(false, 'warmup', '')")
            time.sleep(1.0)

            # 1. bridge end to end, one transaction of --rows rows
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

            # 3. bare nats publish_async, the bridge's bodies and message ids, on a quiet
            #    server: once before the bridge started, once now that it is idle
            nats_after = quiet_ceiling(url, small_bodies, small_ids, "small_after")
            nats_rate = max(nats_before, nats_after)
            print(f"bare nats-py publish_async: {nats_rate:,.0f} msg/s (before "
                  f"{nats_before:,.0f}, after {nats_after:,.0f}; the better)", flush=True)
            ceiling = min(recv_rate, nats_rate)
            ratio = bridge_rate / ceiling
            lower = "pg_recvlogical" if recv_rate < nats_rate else "nats"
            print(f"ratio bridge / lower ceiling ({lower}): {ratio:.2f}; "
                  f"bridge / pg_recvlogical {bridge_rate / recv_rate:.2f}; "
                  f"bridge / nats {bridge_rate / nats_rate:.2f}", flush=True)
            emit("postgres e2e events/s (one tx)", round(bridge_rate), "events/s",
                 ceiling=round(ceiling), ratio=round(ratio, 3))

            # 3b. realistic rows: the bridge, then the same-sized bare loop (quiet)
            settle(2.0)
            before = stream_count(url)
            t_commit = insert_tx(dsn, 1, n, realistic=True)
            real_rate = n / (wait_stored(url, before + n, timeout_s=600,
                                         interval_s=0.02).done_at - t_commit)
            real = realistic_events(dsn, n)
            real_ceiling = quiet_ceiling(url, [e.encode() for e in real], [e.id for e in real],
                                         "real")
            del real
            print(f"realistic rows (timestamptz, numeric, text, jsonb): {real_rate:,.0f} "
                  f"events/s; bare loop with the same bodies {real_ceiling:,.0f} msg/s; "
                  f"ratio {real_rate / real_ceiling:.2f}", flush=True)
            emit("postgres e2e events/s (one tx, realistic rows)", round(real_rate),
                 "events/s", ceiling=round(real_ceiling), ratio=round(real_rate / real_ceiling, 3))

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
