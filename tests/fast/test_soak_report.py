"""The benchmark report's parsing and rendering (bench/report.py), on fixed script outputs.

Pure: no benchmark runs here (performance is measured by ``bench/run_all.py``, never by
tests); this checks that the figures each kind of output carries reach the table.
"""

from __future__ import annotations

from pathlib import Path

from bench.report import BenchRun, markdown, parse_output, plot

BENCH_LINES = """\
warming up
BENCH {"metric": "burst", "value": 6526, "unit": "events/s", "ceiling": 21714, \
"ratio": 0.3, "peak_rss_mb": 105.2}
BENCH_SERIES {"name": "burst", "kind": "throughput", "points": [[0.5, 6000], [1.0, 7000]]}
BENCH_SERIES {"name": "steady", "kind": "latency", "points": [5.0, 7.5, 12.0, 40.0]}
"""

PROSE = """\
nats-server nats://127.0.0.1:58515; 50000 events of 609 bytes; store sqlite
median: bare 11,075/s  outbox+relay 9,917/s (ratio 0.90)  drain 17,901/s (ratio 1.62)
bridge peak RSS (VmHWM): 105 MB
"""

JSON_BLOCK = """\
filled 100000 rows in 7.6s
{
  "snapshot": {"rows_per_s": 4388, "bridge_peak_rss_mb": 104.7, "seconds": 22.8},
  "ok": true
}
"""


def test_bench_lines_give_figures_and_series() -> None:
    figures, series = parse_output(BENCH_LINES)
    assert len(figures) == 1
    f = figures[0]
    assert (f.metric, f.value, f.unit, f.ceiling, f.ratio, f.peak_rss_mb) == (
        "burst", 6526.0, "events/s", 21714, 0.3, 105.2)
    assert [(s.name, s.kind, len(s.points)) for s in series] == [
        ("burst", "throughput", 2), ("steady", "latency", 4)]


def test_prose_lines_give_named_figures_with_ratios() -> None:
    figures, _ = parse_output(PROSE)
    by = {f.metric: f for f in figures}
    assert by["median: outbox+relay"].value == 9917.0
    assert by["median: outbox+relay"].ratio == 0.90
    assert by["median: drain"].ratio == 1.62
    assert by["median: bare"].unit == "/s"
    assert by["bridge peak RSS (VmHWM)"].value == 105.0
    assert not any(f.metric.startswith("nats-server") for f in figures)


def test_a_final_json_block_gives_one_figure_per_number() -> None:
    figures, _ = parse_output(JSON_BLOCK)
    by = {f.metric: f for f in figures}
    assert by["snapshot.rows_per_s"].unit == "/s"
    assert by["snapshot.bridge_peak_rss_mb"].unit == "MB"
    assert by["snapshot.seconds"].value == 22.8
    assert "ok" not in by


def test_markdown_has_machine_command_table_plots_and_raw_output(tmp_path: Path) -> None:
    figures, series = parse_output(BENCH_LINES)
    run = BenchRun("bench_x.py", ["bench/bench_x.py"], 0, 12.0, 110.0, BENCH_LINES,
                   figures, series)
    failed = BenchRun("bench_y.py", ["bench/bench_y.py"], 1, 1.0, None, "Traceback", [], [])
    plots = plot([run], tmp_path / "results")
    text = markdown([run, failed], {"CPU": "test cpu"}, "run_all.py --quick", plots, tmp_path)
    assert "run_all.py --quick" in text and "**CPU**: test cpu" in text
    assert "| bench_x.py | burst | 6,526 | events/s | 21,714 | 0.30 | 105 |" in text
    assert "bench_y.py (exit 1)" in text
    assert "BENCH_SERIES" not in text  # plot data stays out of the raw output
    assert "warming up" in text
    if plots:  # matplotlib is optional (extra "bench")
        assert {p.name for p in plots} == {"throughput.png", "latency.png"}
        assert all(p.stat().st_size > 1000 for p in plots)
        assert "![throughput](results/throughput.png)" in text
