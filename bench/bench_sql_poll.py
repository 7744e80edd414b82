"""Benchmark of ``type: sql_poll``: MariaDB snapshot into JetStream, and diff-mode cost.

Starts its own MariaDB and nats-server (tests/services, free ports, temp dirs) and
reports, for a table of ``--rows`` rows (default 1,000,000):

1. snapshot: ``cdc-bridge run`` as a real process (incrementing mode with
   ``snapshot: initial``) from start until JetStream holds every row: rows/s and the
   bridge's peak RSS (VmHWM);
2. baseline: a bare nats-py ``publish_async`` loop with the same payloads (the events
   the bridge stored, read back) on the same server: msgs/s, and our ratio against it;
3. diff: a second table of the same size in ``diff`` mode, run in a child process: the
   baseline pass (state built, no events), then ``--changed`` (1%) rows updated and a
   second pass timed: seconds and the child's peak RSS, and the events it found.

Usage: ``.venv/bin/python bench/bench_sql_poll.py [--rows N] [--changed 0.01]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    Services,
    bridge,
    bridge_config,
    emit,
    publish_ceiling,
    read_stored,
    services,
    vmhwm_mb,
    wait_stored,
)

DDL = ("CREATE TABLE {t} (id int PRIMARY KEY, customer varchar(40) NOT NULL, "
       "amount decimal(12,2) NOT NULL, note varchar(100), updated_at datetime(6) NOT NULL)")


def fill(engine: sa.Engine, table: str, rows: int) -> None:
    with engine.begin() as c:
        c.execute(sa.text(DDL.format(t=table)))
    raw = engine.raw_connection()  # PyMySQL's executemany sends multi-row INSERTs
    try:
        cur = raw.cursor()
        stmt = f"INSERT INTO {table} VALUES (%s, %s, %s, %s, '2024-01-01 00:00:00.000001')"
        step = 20_000
        for base in range(1, rows + 1, step):
            cur.executemany(stmt, [(i, f"customer-{i % 977}", f"{i % 99999}.{i % 100:02d}",
                                    "legacy row é✓") for i in range(base, min(base + step,
                                                                             rows + 1))])
            raw.commit()
    finally:
        raw.close()


def snapshot(env: Services, url: str, rows: int) -> dict[str, Any]:
    adapter = {"name": "erp", "type": "sql_poll", "url": url, "poll_interval": "1s",
               "batch_size": 2000,
               "tables": [{"name": "bench_rows", "mode": "incrementing",
                           "incrementing_column": "id", "snapshot": "initial"}]}
    t0 = time.time()
    with bridge(env.workdir, bridge_config(env.workdir, env.nats.url, [adapter])) as proc:
        assert proc.proc is not None
        done = wait_stored(env.nats.url, rows, timeout_s=3600, interval_s=0.5, bridge=proc,
                           stall_s=180)
        elapsed = done.done_at - t0
        rss = vmhwm_mb(proc.proc.pid)
    return {"rows": rows, "seconds": round(elapsed, 1), "rows_per_s": round(rows / elapsed),
            "bridge_peak_rss_mb": round(rss, 1)}


def diff_child(url: str, state_dir: str, changed: float, rows: int) -> None:
    """Runs in a child process so that its peak RSS is the diff's alone."""
    from cdc_bridge.adapters.sql_poll.adapter import SqlPollAdapter
    from cdc_bridge.adapters.sql_poll.config import SqlPollConfig

    cfg = SqlPollConfig.model_validate({
        "name": "bench", "type": "sql_poll", "url": url, "poll_interval": "50ms",
        "batch_size": 2000, "tables": [{"name": "bench_rows", "mode": "diff", "snapshot": "none"}]})

    async def one_pass(checkpoint: Any) -> tuple[Any, int, float]:
        from cdc_bridge.adapters.registry import AdapterContext

        adapter = SqlPollAdapter(cfg, AdapterContext(state_dir=Path(state_dir)))
        gen = adapter.changes(checkpoint)
        events, t0 = 0, time.perf_counter()
        start_pass = (checkpoint or {}).get("tables", {}).get("bench_rows", {}).get("pass", 0)
        async for batch in gen:
            events += len(batch.events)
            checkpoint = batch.checkpoint
            st = checkpoint["tables"]["bench_rows"]
            if st["phase"] == "idle" and st["pass"] > start_pass:
                break
        elapsed = time.perf_counter() - t0
        await gen.aclose()  # type: ignore[attr-defined]
        await adapter.close()
        return checkpoint, events, elapsed

    cp, _, base_s = asyncio.run(one_pass(None))
    engine = sa.create_engine(url)
    step = max(int(1 / changed), 1)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE bench_rows SET note = 'changed' WHERE id % :s = 0"), {"s": step})
    engine.dispose()
    _, events, diff_s = asyncio.run(one_pass(cp))
    print(json.dumps({"rows": rows, "baseline_pass_s": round(base_s, 1),
                      "changed_pass_s": round(diff_s, 1), "events": events,
                      "peak_rss_mb": round(vmhwm_mb(), 1)}))


def emit_figures(results: dict[str, Any]) -> None:
    """The BENCH lines bench/report.py reads (the JSON above stays for people)."""
    snap = results.get("snapshot_mariadb_to_jetstream")
    if snap:
        emit("sql_poll snapshot MariaDB->JetStream rows/s", snap["rows_per_s"], "rows/s",
             ceiling=snap["bare_publish_async_msgs_per_s"], ratio=snap["ratio_vs_bare"],
             peak_rss_mb=snap["bridge_peak_rss_mb"])
        emit(f"sql_poll snapshot of {snap['rows']} rows", snap["seconds"], "s")
    diff = results["diff"]
    emit(f"sql_poll diff baseline pass ({diff['rows']} rows)", diff["baseline_pass_s"], "s",
         peak_rss_mb=diff["peak_rss_mb"])
    emit(f"sql_poll diff pass, {diff['changed_fraction']:.0%} changed", diff["changed_pass_s"],
         "s", peak_rss_mb=diff["peak_rss_mb"])
    emit("sql_poll diff events found", diff["events"], "events")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--changed", type=float, default=0.01)
    ap.add_argument("--diff-child", nargs=3, metavar=("URL", "STATE_DIR", "ROWS"))
    ap.add_argument("--skip-snapshot", action="store_true")
    args = ap.parse_args()
    if args.diff_child:
        diff_child(args.diff_child[0], args.diff_child[1], args.changed, int(args.diff_child[2]))
        return
    with services("bench-sqlpoll-", mariadb=True) as env:
        assert env.mariadb is not None
        url = env.mariadb.url.replace("/test", "/bench?charset=utf8mb4")
        admin = sa.create_engine(env.mariadb.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text("CREATE DATABASE bench CHARACTER SET utf8mb4"))
        admin.dispose()
        engine = sa.create_engine(url)
        t0 = time.perf_counter()
        fill(engine, "bench_rows", args.rows)
        engine.dispose()
        print(f"filled {args.rows} rows in {time.perf_counter() - t0:.1f}s", flush=True)
        results: dict[str, Any] = {}
        if not args.skip_snapshot:
            snap = snapshot(env, url, args.rows)
            payloads = [m.data for m in read_stored(env.nats.url, limit=args.rows)]
            rate = asyncio.run(publish_ceiling(env.nats.url, payloads,
                                               subject="base.erp._.bench_rows.r",
                                               stream="BASE"))
            snap["bare_publish_async_msgs_per_s"] = round(rate)
            snap["ratio_vs_bare"] = round(snap["rows_per_s"] / rate, 2)
            results["snapshot_mariadb_to_jetstream"] = snap
            print(json.dumps(snap), flush=True)
        out = subprocess.run([sys.executable, __file__, "--changed", str(args.changed),
                              "--diff-child", url, str(env.workdir / "diffstate"),
                              str(args.rows)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        results["diff"] = json.loads(out.stdout.strip().splitlines()[-1])
        results["diff"]["changed_fraction"] = args.changed
        print(json.dumps(results, indent=2))
        emit_figures(results)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
