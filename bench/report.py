"""Turn benchmark scripts' output into figures, plots and BENCHMARKS.md (no process running).

The format a bench script should print (one JSON object per line)::

    BENCH {"metric": "...", "value": 123.0, "unit": "events/s",
           "ceiling": 456.0, "ratio": 0.27, "peak_rss_mb": 80.5}   # last three optional
    BENCH_SERIES {"name": "...", "kind": "throughput", "points": [[t_s, per_s], ...]}
    BENCH_SERIES {"name": "...", "kind": "latency", "points": [ms, ms, ...]}

Scripts that print something else are still read, best effort: a JSON object (one line,
or a block at the end) gives one figure per numeric leaf, and prose lines such as
``label: 12,345 rows/s`` or ``bridge peak RSS (VmHWM): 90 MB`` give one figure each.
Everything a script printed is also kept verbatim in the report, so no figure is lost
to a parser that guessed wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class Figure:
    metric: str
    value: float
    unit: str = ""
    ceiling: float | None = None
    ratio: float | None = None
    peak_rss_mb: float | None = None
    parsed_from: str = "BENCH"


@dataclass(slots=True)
class Series:
    name: str
    kind: str  # "throughput" | "latency"
    points: list[Any]


@dataclass(slots=True)
class BenchRun:
    script: str
    command: list[str]
    exit_code: int
    seconds: float
    max_rss_mb: float | None
    output: str
    figures: list[Figure] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)


_NUM_UNIT = re.compile(r"(?:(?P<name>[A-Za-z][\w+/-]*)\s+)?(?P<num>-?\d[\d,]*(?:\.\d+)?)\s*"
                       r"(?P<unit>msg/s|rows/s|events/s|ev/s|/s|ms|MB|s|%)?(?![\w/.:])")
_PROSE = re.compile(r"^\s*(?P<label>[A-Za-z][^:=]{2,90}?)\s*[:=]\s*(?P<rest>.+)$")


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _flatten(prefix: str, value: Any, out: list[Figure]) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        key = prefix.lower()
        unit = ("MB" if "rss" in key or key.endswith("_mb") else
                "/s" if "per_s" in key or "rate" in key else
                "ms" if key.endswith("_ms") else "s" if key.endswith("_s") else "")
        out.append(Figure(prefix, float(value), unit, parsed_from="json"))
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)


def _json_block(lines: list[str]) -> dict[str, Any] | None:
    """A JSON object printed over the last lines (e.g. ``json.dumps(x, indent=2)``)."""
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith("{"):
            try:
                value = json.loads("\n".join(lines[start:]))
            except ValueError:
                continue
            return value if isinstance(value, dict) else None
    return None


def parse_output(output: str) -> tuple[list[Figure], list[Series]]:
    figures: list[Figure] = []
    series: list[Series] = []
    lines = output.splitlines()
    for line in lines:
        if line.startswith("BENCH_SERIES "):
            d = json.loads(line[len("BENCH_SERIES "):])
            series.append(Series(str(d["name"]), str(d["kind"]), list(d["points"])))
        elif line.startswith("BENCH "):
            d = json.loads(line[len("BENCH "):])
            figures.append(Figure(str(d["metric"]), float(d["value"]), str(d.get("unit", "")),
                                  d.get("ceiling"), d.get("ratio"), d.get("peak_rss_mb")))
    if figures:
        return figures, series
    block = _json_block(lines)
    if block is not None:
        _flatten("", block, figures)
    else:
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("{") and stripped.endswith("}"):
                try:
                    d = json.loads(stripped)
                except ValueError:
                    continue
                if isinstance(d, dict):
                    _flatten("", d, figures)
    if not figures:
        figures.extend(_prose(lines))
    return figures, series


def _prose(lines: list[str]) -> list[Figure]:
    """``label: [name] number [unit] ...`` lines; ``(ratio x)`` attaches to the figure before."""
    out: list[Figure] = []
    for line in lines:
        m = _PROSE.match(line)
        if not m or "Traceback" in line or m.group("rest").startswith("/"):
            continue
        label = m.group("label").strip()
        unnamed_taken = False
        for n in _NUM_UNIT.finditer(m.group("rest")):
            name, value, unit = n.group("name"), _num(n.group("num")), n.group("unit") or ""
            if name == "ratio" and out and out[-1].ratio is None:
                out[-1].ratio = value
                continue
            if name is None:
                if unnamed_taken:
                    continue
                unnamed_taken = True
            metric = f"{label}: {name}" if name else label
            out.append(Figure(metric, value, unit, parsed_from="text"))
    return out


# -- plots ---------------------------------------------------------------------------


def plot(runs: list[BenchRun], out_dir: Path) -> list[Path]:
    """Throughput over time and latency distribution PNGs; [] without matplotlib/data."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    tput = [(r.script, s) for r in runs for s in r.series if s.kind == "throughput"]
    if tput:
        fig, ax = plt.subplots(figsize=(8, 4))
        for script, s in tput:
            xs = [p[0] for p in s.points]
            ys = [p[1] for p in s.points]
            ax.plot(xs, ys, label=f"{s.name} ({script})")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("events/s")
        ax.set_title("Throughput over time")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out_dir / "throughput.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    lat = [(r.script, s) for r in runs for s in r.series if s.kind == "latency"]
    if lat:
        fig, ax = plt.subplots(figsize=(8, 4))
        for script, s in lat:
            pts = sorted(float(x) for x in s.points)
            ys = [(i + 1) / len(pts) for i in range(len(pts))]
            ax.plot(pts, ys, label=f"{s.name} ({script})")
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (ms, log scale)")
        ax.set_ylabel("fraction of events (CDF)")
        ax.set_title("Latency distribution")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        path = out_dir / "latency.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


# -- markdown ------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def markdown(runs: list[BenchRun], machine: dict[str, str], command: str,
             plots: list[Path], root: Path, extra: str = "") -> str:
    out = ["# Benchmarks", "",
           "Generated by one command; rerun it on your machine to compare:", "",
           f"```sh\n{command}\n```", "", "## Machine", ""]
    out += [f"- **{k}**: {v}" for k, v in machine.items()]
    out += ["", "## Results", "",
            "Ratio = the figure divided by its ceiling measured in the same run on the same "
            "server (a bare nats-py `publish_async` loop unless the script says otherwise). "
            "Peak RSS: as reported by the script (the bridge process), else the largest "
            "process of the script's tree (`wait4` maxrss).", "",
            "| bench | metric | value | unit | ceiling | ratio | peak RSS MB |",
            "|---|---|---:|---|---:|---:|---:|"]
    for r in runs:
        status = "" if r.exit_code == 0 else f" (exit {r.exit_code})"
        if not r.figures:
            out.append(f"| {r.script}{status} | (no figures parsed; see output) | | | | | "
                       f"{_fmt(r.max_rss_mb)} |")
        for f in r.figures:
            rss = f.peak_rss_mb if f.peak_rss_mb is not None else None
            out.append(f"| {r.script}{status} | {f.metric} | {_fmt(f.value)} | {f.unit} | "
                       f"{_fmt(f.ceiling)} | {'' if f.ratio is None else f'{f.ratio:.2f}'} | "
                       f"{_fmt(rss)} |")
    out += ["", "| bench | exit | wall s | max RSS of its process tree (MB) | figures from |",
            "|---|---:|---:|---:|---|"]
    for r in runs:
        src = ",".join(sorted({f.parsed_from for f in r.figures})) or "-"
        out.append(f"| {r.script} | {r.exit_code} | {r.seconds:.0f} | {_fmt(r.max_rss_mb)} | "
                   f"{src} |")
    if plots:
        out += ["", "## Plots", ""]
        out += [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in plots]
    if extra:
        out += ["", extra]
    out += ["", "## Raw output", ""]
    for r in runs:
        shown = "\n".join(line for line in r.output.splitlines()
                          if not line.startswith("BENCH_SERIES "))
        out += [f"### {r.script}", "", f"`{' '.join(r.command)}`", "", "```", shown.strip(),
                "```", ""]
    return "\n".join(out) + "\n"
