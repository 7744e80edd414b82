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
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
from nats.js import api

from adapters.files.config import FilesConfig
from adapters.files.session import EventBuilder, FileSession
from tests.helpers import BridgeProcess, write_config
from tests.services.nats_server import NatsServer


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


async def baseline(url: str, bodies: list[bytes], total: int, window: int) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=window)
    await js.add_stream(api.StreamConfig(name="BASE", subjects=["base.>"],
                                         duplicate_window=600))
    start = time.perf_counter()
    for i in range(total):
        await js.publish_async("base.bench._.t.c", bodies[i % len(bodies)],
                               headers={"Nats-Msg-Id": f"base-{i}"})
    await js.publish_async_completed()
    elapsed = time.perf_counter() - start
    info = await js.stream_info("BASE")
    assert info.state.messages == total, info.state.messages
    await js.delete_stream("BASE")
    await nc.close()
    return elapsed


async def stream_count(url: str) -> int:
    nc = await nats.connect(url)
    try:
        try:
            return int((await nc.jetstream().stream_info("CDC")).state.messages)
        except Exception:
            return 0
    finally:
        await nc.close()


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(rows: int, batch_size: int, keep: bool) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_files_"))
    drop = tmp / "drop"
    drop.mkdir()
    staging = tmp / "big.csv"
    size = write_csv(staging, rows)
    print(f"CSV: {rows:,} rows, {size / 1e6:.1f} MB")
    server = NatsServer(tmp / "nats")
    server.start()
    try:
        adapter = {"name": "bench", "type": "files", "path": str(drop), "pattern": "*.csv",
                   "format": "csv", "mode": "drop", "key": ["id"],
                   "types": {"id": "int", "amount": "decimal"}, "batch_size": batch_size,
                   "poll_interval": "100ms", "stable_for": "0s"}
        cfg = FilesConfig.model_validate({k: v for k, v in adapter.items()})
        bodies = sample_bodies(cfg, staging, 10_000)
        avg = sum(map(len, bodies)) / len(bodies)
        base_s = asyncio.run(baseline(server.url, bodies, rows, 4000))
        print(f"baseline publish_async loop: {rows / base_s:,.0f} msg/s "
              f"({base_s:.1f}s, body ~{avg:.0f} B)")
        os.rename(staging, drop / "big.csv")
        config = write_config(tmp / "bridge.yaml", {
            "state_dir": str(tmp / "state"),
            "nats": {"url": server.url, "stream": "CDC", "subject_prefix": "cdc"},
            "adapters": [adapter]})
        bridge = BridgeProcess(config, tmp / "bridge.log")
        start = time.perf_counter()
        bridge.start()
        assert bridge.proc is not None
        first = None
        rss = 0.0
        while True:
            n = asyncio.run(stream_count(server.url))
            now = time.perf_counter()
            if n and first is None:
                first = now
            rss = max(rss, peak_rss_mb(bridge.proc.pid))
            if n >= rows:
                break
            if not bridge.alive():
                raise SystemExit("bridge died:\n" + bridge.log()[-3000:])
            time.sleep(0.25)
        elapsed = time.perf_counter() - start
        rss = max(rss, peak_rss_mb(bridge.proc.pid))
        bridge.terminate()
        rate = rows / elapsed
        print(f"bridge (files drop -> outbox -> JetStream): {rate:,.0f} rows/s "
              f"({elapsed:.1f}s from process start; "
              f"{rows / (now - (first or start)):,.0f} rows/s from the first message)")
        print(f"ratio bridge / bare publish_async: {rate / (rows / base_s):.2f}")
        print(f"bridge peak RSS (VmHWM): {rss:.0f} MB")
    finally:
        server.stop()
        if not keep:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (files, logs)")
    args = ap.parse_args()
    run(args.rows, args.batch_size, args.keep)


if __name__ == "__main__":
    main()
