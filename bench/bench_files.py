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

With ``--filter EXPR`` (a row filter, docs/filters.md; evaluated in the bridge for this
source) it also measures, in the same run, the cost of the filter: the adapter alone
(parse and build events for every row, in process) with and without it, and the bridge
end to end with and without it on a fresh stream each. Use a filter every row passes
(the default one does) so both runs publish the same messages.

    .venv/bin/python bench/bench_files.py --rows 1000000
    .venv/bin/python bench/bench_files.py --rows 300000 --filter default
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

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


#: Every generated row passes it (status is open, amounts are >= 0): same output.
DEFAULT_FILTER = "status in ('open', 'paid') and amount >= 0 and customer is not null"


def adapter_rate(cfg: FilesConfig, path: Path) -> float:
    """Rows/s of the adapter's own work (read, parse, filter, build events), in process."""
    builder = EventBuilder(cfg)
    session = FileSession(cfg, path, None, 1)
    n = 0
    start = time.perf_counter()
    while True:
        parsed, more = session.read(cfg.batch_size, final=True)
        builder.build(parsed, "bench", path.name)
        n += len(parsed)
        if not more:
            break
    session.close()
    return n / (time.perf_counter() - start)


def bridge_rate(env: Any, staging: Path, adapter: dict[str, Any], rows: int, tag: str
                ) -> float:
    """The bridge end to end on a copy of the file, into a stream of its own."""
    work = env.workdir / tag
    drop = work / "drop"
    drop.mkdir(parents=True)
    shutil.copyfile(staging, work / "big.csv")
    os.rename(work / "big.csv", drop / "big.csv")
    stream = f"CDC_{tag.upper()}"
    cfg = bridge_config(work, env.nats.url, [{**adapter, "path": str(drop)}])
    cfg["nats"].update(stream=stream, subject_prefix=tag)
    start = time.time()
    with bridge(work, cfg) as proc:
        done = wait_stored(env.nats.url, rows, timeout_s=3600, interval_s=0.25,
                           bridge=proc, stall_s=180, stream=stream)
    return rows / (done.done_at - start)


def filter_cost(env: Any, staging: Path, adapter: dict[str, Any], rows: int,
                expr: str) -> None:
    with_filter = {**adapter, "filter": expr}
    plain_cfg = FilesConfig.model_validate(adapter)
    filt_cfg = FilesConfig.model_validate(with_filter)
    print(f"filter: {expr}")
    a0, a1 = adapter_rate(plain_cfg, staging), adapter_rate(filt_cfg, staging)
    print(f"adapter alone (read, parse, build): {a0:,.0f} rows/s without, {a1:,.0f} with "
          f"the filter; ratio with/without {a1 / a0:.3f}")
    b0 = bridge_rate(env, staging, adapter, rows, "plain")
    b1 = bridge_rate(env, staging, with_filter, rows, "filtered")
    print(f"bridge end to end: {b0:,.0f} rows/s without, {b1:,.0f} with the filter; "
          f"ratio with/without {b1 / b0:.3f}")
    # ceiling: the same measure without the filter, in the same run
    emit("files adapter alone rows/s with a row filter", round(a1), "rows/s",
         ceiling=round(a0), ratio=round(a1 / a0, 3))
    emit("files drop->JetStream rows/s with a row filter", round(b1), "rows/s",
         ceiling=round(b0), ratio=round(b1 / b0, 3))


def run(rows: int, batch_size: int, keep: bool, expr: str | None = None) -> None:
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
        print(f"baseline publish_async loop (before): {base_rate:,.0f} msg/s "
              f"({rows / base_rate:.1f}s, body ~{avg:.0f} B)")
        os.rename(staging, drop / "big.csv")
        start = time.time()
        with bridge(env.workdir, bridge_config(env.workdir, env.nats.url, [adapter])) as proc:
            assert proc.proc is not None
            done = wait_stored(env.nats.url, rows, timeout_s=3600, interval_s=0.25,
                               bridge=proc, stall_s=180)
            rss = vmhwm_mb(proc.proc.pid)
        # the ceiling again now that the bridge is gone; the better of before and after
        base_rate = max(base_rate, asyncio.run(publish_ceiling(
            env.nats.url, bodies, count=rows, subject="base.bench._.t.c", stream="BASE2")))
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
        if expr is not None:
            shutil.copyfile(drop / "big.csv", staging)
            filter_cost(env, staging, adapter, rows, expr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (files, logs)")
    ap.add_argument("--filter", default=None, metavar="EXPR",
                    help="also measure the cost of this row filter ('default': one every "
                         "generated row passes)")
    args = ap.parse_args()
    expr = DEFAULT_FILTER if args.filter == "default" else args.filter
    run(args.rows, args.batch_size, args.keep, expr)


if __name__ == "__main__":
    main()
