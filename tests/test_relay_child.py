"""The relay in its own process (cdc_bridge.daemon.relay_process and .relay_child), for real.

- kill -9 of the relay child while it drains a large outbox: the daemon restarts it and
  every row reaches the stream exactly once, in order; the daemon exits 0 afterwards;
- kill -9 of the daemon: the relay child dies with it (nothing keeps publishing), and
  after a restart every row is in the stream exactly once, in order;
- the child's counters reach the daemon's /metrics and /status;
- a fatal error in the child (a stream JetStream cannot change in place) stops the
  daemon with exit code 1 and the reason in the log;
- the metric mirror's arithmetic (pure, no process).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
import urllib.request
from pathlib import Path

import nats
import pytest
from nats.js import api

from cdc_bridge import metrics
from cdc_bridge.daemon.relay_process import MetricMirror
from cdc_bridge.outbox.sqlite import SqliteStore
from tests.helpers import BridgeProcess, stream_count, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port
from tests.test_relay import assert_once_in_order, make_msgs, read_all

SUBJECTS = ("cdc.erp._.a.c", "cdc.erp._.b.c", "cdc.crm.public.c.u")


def prefill(state: Path, total: int) -> None:
    store = SqliteStore(state / "outbox.db")
    msgs = make_msgs(0, total, SUBJECTS)
    for i in range(0, total, 5000):
        store.append("erp", msgs[i:i + 5000], {"n": i})
    store.close()


def config(tmp: Path, nats_url: str, **extra: object) -> Path:
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [], **extra})


def relay_pids(bridge: BridgeProcess) -> list[int]:
    return [int(p) for p in re.findall(r"relay process started \(pid (\d+)\)", bridge.log())]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie has stopped running


def outbox_pending(state: Path) -> int:
    store = SqliteStore(state / "outbox.db")
    try:
        return store.stats().pending
    finally:
        store.close()


def test_kill_9_of_the_relay_child_is_recovered_exactly_once(
        tmp_path: Path, nats_server: NatsServer) -> None:
    total = 60_000
    prefill(tmp_path / "state", total)
    bridge = BridgeProcess(config(tmp_path, nats_server.url), tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_for(lambda: stream_count(nats_server.url) >= 8_000, interval_s=0.05,
                 what="8000 published", timeout_s=60)
        first = wait_for(lambda: relay_pids(bridge), what="relay pid")[-1]  # the current one
        assert alive(first), bridge.log()[-3000:]
        os.kill(first, 9)
        assert stream_count(nats_server.url) < total, "drained before the kill"
        wait_for(lambda: relay_pids(bridge)[-1] != first, what="relay restarted",
                 timeout_s=30)
        assert bridge.alive()
        wait_for(lambda: stream_count(nats_server.url) >= total, what="all published",
                 timeout_s=90)
        wait_for(lambda: outbox_pending(tmp_path / "state") == 0, what="outbox empty",
                 timeout_s=30)
    finally:
        code = bridge.terminate()
    assert code == 0, bridge.log()
    assert f"relay process {first} exited with code -9" in bridge.log()
    stored = asyncio.run(read_all(nats_server.url))
    assert len(stored) == total  # exactly once: the republished rows were duplicates
    assert_once_in_order(stored, range(total))


def test_kill_9_of_the_daemon_takes_the_relay_child_with_it(
        tmp_path: Path, nats_server: NatsServer) -> None:
    total = 60_000
    prefill(tmp_path / "state", total)
    bridge = BridgeProcess(config(tmp_path, nats_server.url), tmp_path / "bridge.log")
    try:
        bridge.start()
        wait_for(lambda: stream_count(nats_server.url) >= 8_000, interval_s=0.05,
                 what="8000 published", timeout_s=60)
        child = relay_pids(bridge)[0]
        bridge.kill9()
        wait_for(lambda: not alive(child), interval_s=0.05, timeout_s=5,
                 what="relay child gone with the daemon")
        # what the child had already written to its socket may still land: wait until
        # the count holds still, then make sure it keeps holding still
        last: list[int] = [-1]

        def steady() -> int | None:
            now = stream_count(nats_server.url)  # >= 8000 here, so never a falsy 0
            prev, last[0] = last[0], now
            return now if now == prev else None

        stopped_at = wait_for(steady, interval_s=0.5, timeout_s=30, what="a steady count")
        assert stopped_at < total, "drained before the kill"
        time.sleep(1.0)
        assert stream_count(nats_server.url) == stopped_at, "something kept publishing"
        bridge.start()
        wait_for(lambda: stream_count(nats_server.url) >= total, what="all published",
                 timeout_s=90)
        wait_for(lambda: outbox_pending(tmp_path / "state") == 0, what="outbox empty",
                 timeout_s=30)
    finally:
        if bridge.alive():
            assert bridge.terminate() == 0, bridge.log()
    stored = asyncio.run(read_all(nats_server.url))
    assert len(stored) == total
    assert_once_in_order(stored, range(total))


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return bytes(r.read())


def _sample(text: str, name: str, labels: str | None = None) -> float:
    """The value of ``name``: summed over its label sets, or the one with ``labels``."""
    values = {m.group(1) or "": float(m.group(2)) for m in re.finditer(
        rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M)}
    return values.get(labels, 0.0) if labels is not None else sum(values.values())


def test_child_counters_reach_metrics_and_status(tmp_path: Path,
                                                 nats_server: NatsServer) -> None:
    total = 3_000
    prefill(tmp_path / "state", total)
    port = free_port()
    bridge = BridgeProcess(config(tmp_path, nats_server.url,
                                  http={"enabled": True, "host": "127.0.0.1", "port": port}),
                           tmp_path / "bridge.log")
    base = f"http://127.0.0.1:{port}"
    bridge.start()
    try:
        def published() -> str | None:
            try:
                text = _get(base + "/metrics").decode()
            except OSError:
                return None
            return text if _sample(text, "cdc_events_published_total") == total else None

        text = wait_for(published, what=f"{total} published in /metrics", timeout_s=60)
        assert _sample(text, "cdc_publish_latency_seconds_count") == total
        assert _sample(text, "cdc_publish_latency_seconds_sum") > 0
        # per adapter (the subject's adapter token): erp has a and b, crm has c
        erp, crm = (_sample(text, "cdc_events_published_total", f'{{adapter="{a}"}}')
                    for a in ("erp", "crm"))
        assert erp + crm == total and erp > crm > 0, (erp, crm)
        assert _sample(text, "cdc_publish_latency_seconds_count", '{adapter="crm"}') == crm
        assert "_created" not in text  # no _created series
        assert 'cdc_build_info{' in text
        assert _sample(text, "cdc_nats_connected") == 1.0
        status = json.loads(_get(base + "/status"))
        assert status["relay"]["published"] == total
        assert status["relay"]["state"] == "running"
    finally:
        code = bridge.terminate()
    assert code == 0, bridge.log()
    assert f"published={total} " in bridge.log()  # the summary line has the child's count


def test_fatal_error_in_the_child_stops_the_daemon(tmp_path: Path,
                                                   nats_server: NatsServer) -> None:
    async def memory_stream() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(api.StreamConfig(
                name="CDC", subjects=["cdc.>"], storage=api.StorageType.MEMORY))
        finally:
            await nc.close()

    asyncio.run(memory_stream())
    prefill(tmp_path / "state", 10)
    bridge = BridgeProcess(config(tmp_path, nats_server.url), tmp_path / "bridge.log")
    bridge.start()
    assert bridge.proc is not None
    code = bridge.proc.wait(60)
    assert code == 1, bridge.log()
    assert "JetStream cannot change it in place" in bridge.log()
    assert len(relay_pids(bridge)) == 1  # fatal: not restarted


@pytest.fixture()
def counters() -> dict[str, float]:
    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    return {"published": value("cdc_events_published_total", adapter="erp"),
            "dead": value("cdc_dead_letters_total", adapter="erp", stage="publish"),
            "lat_count": value("cdc_publish_latency_seconds_count", adapter="erp"),
            "lat_sum": value("cdc_publish_latency_seconds_sum", adapter="erp"),
            "lat_le_0.01": value("cdc_publish_latency_seconds_bucket", adapter="erp",
                                 le="0.01")}


def test_metric_mirror_adds_increases_and_restarts_from_zero(counters: dict[str, float]
                                                             ) -> None:
    def snap(published: float, dead: float, b: list[float], total: float) -> dict[str, object]:
        return {"counters": [["cdc_events_published_total", {"adapter": "erp"}, published],
                             ["cdc_dead_letters_total", {"adapter": "erp", "stage": "publish"},
                              dead]],
                "latency": {"erp": {"buckets": b, "sum": total}}}

    n = len(metrics.PUBLISH_LATENCY.labels("erp")._upper_bounds)  # 13 bounds and +Inf
    cum = [1.0, 3.0] + [3.0] * (n - 2)  # 1 observation <= 5 ms, 2 more <= 10 ms
    mirror = MetricMirror()
    mirror.apply(snap(10, 1, cum, 0.02))
    mirror.apply(snap(25, 1, [c + 2 for c in cum], 0.03))
    restarted = MetricMirror()  # a new child counts from zero
    restarted.apply(snap(5, 0, [0.0] * n, 0.0))

    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    assert value("cdc_events_published_total", adapter="erp") - counters["published"] == 30
    assert value("cdc_dead_letters_total", adapter="erp", stage="publish") - \
        counters["dead"] == 1
    assert value("cdc_publish_latency_seconds_count", adapter="erp") - \
        counters["lat_count"] == 5
    assert value("cdc_publish_latency_seconds_bucket", adapter="erp", le="0.01") - \
        counters["lat_le_0.01"] == 5
    assert abs(value("cdc_publish_latency_seconds_sum", adapter="erp") - counters["lat_sum"]
               - 0.03) < 1e-9
