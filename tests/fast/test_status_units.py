"""The status page's pure parts: the token rule, the counter history, the shipped assets."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from cdc_bridge.adapters.contract import SnapshotReport
from cdc_bridge.config import parse_config
from cdc_bridge.daemon import overview as overview_module
from cdc_bridge.daemon.control import ControlDb
from cdc_bridge.daemon.history import History, Latency, Sample
from cdc_bridge.daemon.http_auth import is_loopback, writes_refused_reason
from cdc_bridge.daemon.overview import Overview, _redacted
from cdc_bridge.daemon.snapshots import AdapterStats
from cdc_bridge.daemon.statuspage import ASSETS, load_assets
from cdc_bridge.kernel.errors import ConfigError


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.7", False),
    ("bridge.internal", False), ("", False)])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_writes_refused_only_beyond_loopback_without_token() -> None:
    assert writes_refused_reason("127.0.0.1", None) is None
    assert writes_refused_reason("0.0.0.0", "a-token-of-16-chars") is None
    reason = writes_refused_reason("0.0.0.0", None)
    assert reason is not None and "http.token" in reason


def test_token_config_is_a_secret_of_some_length() -> None:
    token = "t0ken-from-the-environment"
    cfg = parse_config("http: {enabled: true, host: 0.0.0.0, token: '${TOK}'}",
                       env={"TOK": token})
    assert cfg.http.token == token and token in cfg.secrets
    with pytest.raises(ConfigError) as e:
        parse_config("http: {token: short}")
    assert "http.token" in str(e.value) and "short" not in str(e.value)


def _sample(t: float, events: int, published: int, lat: Latency | None = None) -> Sample:
    return Sample(t, {"erp": events}, published, lat or Latency())


def test_history_rates_and_sparkline() -> None:
    h = History(keep=5, recent_s=10.0)
    assert h.published_rate() is None and h.series("erp") == []
    for i in range(8):
        h.add(_sample(float(i), events=10 * i, published=5 * i))
    h.add(_sample(7.0, events=999, published=999))  # not newer: ignored
    assert len(h.samples) == 5
    assert h.series("erp") == [10.0] * 4
    assert h.adapter_rate("erp") == 10.0 and h.published_rate() == 5.0
    assert h.adapter_rate("nope") is None


def test_history_latency_window() -> None:
    bounds = (0.01, 0.1, 1.0, float("inf"))

    def lat(counts: tuple[int, ...], total: float) -> Latency:
        return Latency(float(counts[-1]), total, tuple(zip(bounds, map(float, counts),
                                                           strict=True)))

    h = History()
    h.add(_sample(0.0, 0, 0, lat((0, 0, 0, 0), 0.0)))
    assert h.latency()["mean_s"] is None
    # 100 publishes: 90 under 10 ms, 8 under 100 ms, 2 under 1 s
    h.add(_sample(1.0, 0, 100, lat((90, 98, 100, 100), 1.5)))
    got = h.latency()
    assert got["count"] == 100 and got["mean_s"] == 0.015 and got["p95_s"] == 0.1
    h.add(_sample(2.0, 0, 100, lat((90, 98, 100, 100), 1.5)))
    assert h.latency()["count"] == 100  # the window still holds them


def test_overview_redacts_every_string() -> None:
    data = {"a": ["x pw123 y", {"b": "pw123"}], "n": 3}
    assert _redacted(data, lambda s: s.replace("pw123", "***")) == {
        "a": ["x *** y", {"b": "***"}], "n": 3}


def test_assets_ship_in_the_package_and_load_nothing_from_elsewhere() -> None:
    assets = load_assets()
    assert set(assets) == set(ASSETS)
    for name, body in assets.items():
        text = body.decode()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), name
        assert "http://" not in text.replace("http://www.w3.org/", ""), name
    page = assets["index.html"].decode()
    assert 'src="static/app.js"' in page and 'href="static/app.css"' in page
    assert "innerHTML" not in assets["app.js"].decode()


class _Progressing:
    """An adapter reporting a re-snapshot of 1000 rows, ``rows`` read so far."""

    def __init__(self) -> None:
        self.rows = 0

    def snapshot_progress(self) -> SnapshotReport:
        return SnapshotReport(requested=1, committed=1, rows=self.rows, total=1000, done=False)


class _Daemon:
    def __init__(self, adapter: _Progressing) -> None:
        self.adapters = {"erp": AdapterStats("sql_poll", state="running")}
        self.adapters["erp"].adapter = adapter  # type: ignore[assignment]

    def live_state(self) -> dict[str, Any]:
        return {"adapters": {}, "relay": {}, "outbox": {}}


class _NoJetStream:
    async def read(self) -> dict[str, Any]:
        return {}


def test_snapshot_progress_rate_and_eta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    control = ControlDb(tmp_path / "control.db")
    rid = control.submit("snapshot", "erp", ["invoices"])
    control.claim_pending()
    adapter = _Progressing()
    view = Overview(_Daemon(adapter), control, _NoJetStream(),  # type: ignore[arg-type]
                    lambda s: s)
    clock = [100.0]
    monkeypatch.setattr(overview_module.time, "monotonic", lambda: clock[0])
    for rows in (0, 100, 200):  # 100 rows a second
        adapter.rows = rows
        control.update(rid, events=rows)
        snap = asyncio.run(view.build())["snapshots"][0]
        clock[0] += 1.0
    assert snap["id"] == rid and snap["status"] == "running"
    assert (snap["rows"], snap["total"]) == (200, 1000)
    assert snap["rate_per_s"] == 100.0 and snap["eta_s"] == 8.0
    control.update(rid, status="done", events=1000)
    snap = asyncio.run(view.build())["snapshots"][0]
    assert snap["status"] == "done" and snap["eta_s"] is None


def test_read_latency_sums_every_series() -> None:
    from cdc_bridge import metrics
    from cdc_bridge.daemon.history import read_latency

    before = read_latency()
    hist: Any = metrics.PUBLISH_LATENCY
    if hist._labelnames:  # one series per adapter: observe two of them
        hist.labels("a-test").observe(0.02)
        hist.labels("b-test").observe(0.2)
    else:
        hist.observe(0.02)
        hist.observe(0.2)
    after = read_latency()
    assert after.count - before.count == 2
    assert abs((after.total - before.total) - 0.22) < 1e-9
    gained = {b: n - dict(before.buckets).get(b, 0.0) for b, n in after.buckets}
    assert gained[0.025] == 1 and gained[0.25] == 2 and gained[float("inf")] == 2
