"""Benchmark: a large CSV dropped into a folder -> the bridge (real process) -> JetStream.

Starts its own nats-server (tests/services, free port), writes a CSV of ``--rows`` rows,
and measures in the same run, on the same server:

1. baseline: a bare nats-py ``publish_async`` loop publishing the same number of
   messages with the same bodies (real CloudEvents built by the files adapter's own
   event code for the file's first rows, cycled, each with its own ``Nats-Msg-Id``),
   into a separate stream;
2. the bridge: ``cdc-bridge run`` with a ``type: files`` drop-mode adapter on the file,
   timed from process start until the stream holds every row; peak RSS (VmHWM) of the
   bridge process is read from /proc before it is stopped.

Prints rows/s for both, their ratio, and the bridge's peak RSS.

    .venv/bin/python bench/bench_files.py --rows 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    bridge,
    bridge_config,
    emit,
    publish_ceiling,
    services,
    vmhwm_mb,
    wait_stored,
)
from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.session import EventBuilder, FileSession


def write_csv(path: Path, rows: int) -> int:
    with open(path, "w", buffering=1 << 20) as f:
        f.write("id,customer,amount,status,note\n")
        buf = io.StringIO()
        for i in range(rows):
            buf.write(f'{i},cust-{i % 977},{i % 10000}.{i % 100:02d},open,"note {i}, ok"\n')
            if i % 50_000 == 49_999:
                f.write(buf.getvalue())
                buf = io.StringIO()
        f.write(buf.getvalue())
    return path.stat().st_size


def sample_bodies(cfg: FilesConfig, path: Path, n: int) -> list[bytes]:
    session = FileSession(cfg, path, None, 1)
    parsed, _ = session.read(n, final=True)
    session.close()
    events, _ = EventBuilder(cfg).build(parsed, "bench", path.name)
    return [e.encode() for e in events]


def run(rows: int, batch_size: int, keep: bool) -> None:
    with services("bench_files_", keep=keep) as env:
        drop = env.workdir / "drop"
        drop.mkdir()
        staging = env.workdir / "big.csv"
        size = write_csv(staging, rows)
        print(f"CSV: {rows:,} rows, {size / 1e6:.1f} MB")
        adapter = {"name": "bench", "type": "files", "path": str(drop), "pattern": "*.csv",
                   "format": "csv", "mode": "drop", "key": ["id"],
                   "types": {"id": "int", "amount": "decimal"}, "batch_size": batch_size,
                   "poll_interval": "100ms", "stable_for": "0s"}
        bodies = sample_bodies(FilesConfig.model_validate(adapter), staging, 10_000)
        avg = sum(map(len, bodies)) / len(bodies)
        base_rate = asyncio.run(publish_ceiling(env.nats.url, bodies, count=rows,
                                                subject="base.bench._.t.c", stream="BASE"))
        print(f"baseline publish_async loop: {base_rate:,.0f} msg/s "
              f"({rows / base_rate:.1f}s, body ~{avg:.0f} B)")
        os.rename(staging, drop / "big.csv")
        start = time.time()
        with bridge(env.workdir, bridge_config(env.workdir, env.nats.url, [adapter])) as proc:
            assert proc.proc is not None
            done = wait_stored(env.nats.url, rows, timeout_s=3600, interval_s=0.25,
                               bridge=proc, stall_s=180)
            rss = vmhwm_mb(proc.proc.pid)
        elapsed = done.done_at - start
        rate = rows / elapsed
        from_first = rows / max(done.done_at - done.first_at, 1e-3)
        print(f"bridge (files drop -> outbox -> JetStream): {rate:,.0f} rows/s "
              f"({elapsed:.1f}s from process start; "
              f"{from_first:,.0f} rows/s from the first message)")
        print(f"ratio bridge / bare publish_async: {rate / base_rate:.2f}")
        print(f"bridge peak RSS (VmHWM): {rss:.0f} MB")
        emit("files CSV drop->JetStream rows/s (from process start)", round(rate), "rows/s",
             ceiling=round(base_rate), ratio=round(rate / base_rate, 3),
             peak_rss_mb=round(rss, 1))
        emit("files CSV drop->JetStream rows/s (from the first message)", round(from_first),
             "rows/s", ceiling=round(base_rate), ratio=round(from_first / base_rate, 3))
        emit(f"files CSV size ({rows} rows)", round(size / 1e6, 1), "MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (files, logs)")
    args = ap.parse_args()
    run(args.rows, args.batch_size, args.keep)


if __name__ == "__main__":
    main()
