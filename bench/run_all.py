"""Run every benchmark and write BENCHMARKS.md: ``.venv/bin/python bench/run_all.py``.

Runs each ``bench/bench_*.py`` as its own process, one after another (the machine is
small; benchmarks must not compete), captures its output and the peak RSS of its
process tree (``os.wait4``), reads its figures (see :mod:`bench.report` for the format),
then writes ``BENCHMARKS.md`` at the repository root with the machine's description,
the command, a table, plots under ``bench/plots/`` and every script's raw output
(``bench/results/results.json``, not versioned, holds the parsed figures).

``--quick`` passes smaller sizes to scripts that accept them (``--rows``, ``--events``,
``--rounds``, ``--seconds``...; found in each script's ``--help``), for a fast check of
the whole chain. ``--soak N`` also runs the fault-injection soak for N seconds and
includes its table. Needs matplotlib for the plots: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import BenchRun, markdown, parse_output, plot  # noqa: E402

QUICK = {"--rows": "100000", "--big-rows": "200000", "--events": "50000", "--rounds": "1",
         "--seconds": "8",
         "--latency-seconds": "5", "--duration": "10"}


def machine() -> dict[str, str]:
    def first(cmd: list[str]) -> str:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        mem = "unknown"
    from cdc_bridge.daemon.embedded import nats_server_binary

    pg = first(["pg_config", "--version"])
    return {
        "CPU": f"{cpu}, {os.cpu_count()} logical CPUs (nproc {first(['nproc'])})",
        "memory": mem,
        "OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": platform.python_version(),
        "PostgreSQL": pg,
        "MariaDB": first(["mariadbd", "--version"]),
        "nats-server": first([nats_server_binary(), "--version"]),
        "date (UTC)": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "note": "shared machine; other work may have run at the same time",
    }


def bench_args(script: Path, quick: bool) -> list[str]:
    if not quick:
        return []
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    offered = set(re.findall(r"(--[a-z][a-z0-9-]*)", res.stdout))
    return [x for opt, val in QUICK.items() if opt in offered for x in (opt, val)]


def run_one(cmd: list[str], timeout_s: float) -> tuple[int, float, float | None, str]:
    """Run ``cmd``; exit code, seconds, max RSS (MB) of its tree, output (stdout+stderr)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read() if proc.stdout
                                                           else b""), daemon=True)
    reader.start()
    timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    reader.join(30)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = b"".join(chunks).decode("utf-8", "replace")
    return proc.returncode, time.monotonic() - start, usage.ru_maxrss / 1024, out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a fast check")
    p.add_argument("--only", default="", help="comma-separated script name parts to run")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per script")
    p.add_argument("--soak", type=float, default=0.0, help="also run the soak for N seconds")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = p.parse_args(argv)
    scripts = sorted((ROOT / "bench").glob("bench_*.py"))
    if args.only:
        parts = args.only.split(",")
        scripts = [s for s in scripts if any(x in s.stem for x in parts)]
    runs: list[BenchRun] = []
    for script in scripts:
        cmd = [sys.executable, str(script.relative_to(ROOT)), *bench_args(script, args.quick)]
        print(f"== {' '.join(cmd)}", flush=True)
        code, secs, rss, out = run_one(cmd, args.timeout)
        figures, series = parse_output(out)
        runs.append(BenchRun(script.name, cmd[1:], code, secs, rss, out, figures, series))
        for f in figures:
            print(f"   {f.metric}: {f.value:g} {f.unit}"
                  + (f" (ratio {f.ratio:.2f})" if f.ratio is not None else ""), flush=True)
        print(f"   exit {code} in {secs:.0f}s; max RSS {rss or 0:.0f} MB", flush=True)
    extra = ""
    if args.soak > 0:
        cmd = [sys.executable, "-m", "bench.soak", "--duration", str(args.soak)]
        print(f"== {' '.join(cmd)}", flush=True)
        code, secs, _, out = run_one(cmd, args.soak + 900)
        table = [ln for ln in out.splitlines()
                 if not re.match(r"^\d{4}-\d\d-\d\d ", ln) and not ln.startswith("SOAK ")]
        extra = ("## Fault-injection soak\n\n`python -m bench.soak --duration "
                 f"{args.soak:g}` (exit {code}, {secs:.0f}s):\n\n```\n"
                 + "\n".join(table).strip() + "\n```")
        print("\n".join(table[-3:]), flush=True)
    plots = plot(runs, ROOT / "bench" / "plots")
    command = ".venv/bin/python bench/run_all.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    args.out.write_text(markdown(runs, machine(), command, plots, ROOT, extra))
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "results.json").write_text(json.dumps(
        [{"script": r.script, "exit": r.exit_code, "seconds": round(r.seconds, 1),
          "max_rss_mb": r.max_rss_mb, "figures": [asdict(f) for f in r.figures]}
         for r in runs], indent=2))
    print(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}"
          + (f" and {len(plots)} plot(s)" if plots else " (no plots)"))
    return 0 if all(r.exit_code == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
