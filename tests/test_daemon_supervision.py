"""The daemon in-process with test-only adapter types, against a real nats-server.

Covers supervision (a crashing adapter is restarted with back-off, reported in metrics
and state, while another adapter keeps flowing; a FatalError stops the daemon with exit
code 1) and on-demand snapshots through the control channel (the CLI client side
against the running daemon, progress, "not supported" for types without the protocol).
The toy source types come from :mod:`tests.toy_source` (registered per test).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cdc_bridge.cli.snapshot import request_snapshot
from cdc_bridge.config import BridgeConfig
from cdc_bridge.daemon.control import DONE, FAILED, ControlDb, control_path
from cdc_bridge.daemon.daemon import Daemon
from cdc_bridge.metrics import REGISTRY as METRICS
from tests.helpers import read_stream
from tests.services.nats_server import NatsServer
from tests.toy_source import PlainAdapter, ToyConfig, toy_types  # noqa: F401 (fixture)


def make_config(tmp: Path, nats_url: str, *adapters: ToyConfig) -> BridgeConfig:
    base = BridgeConfig.model_validate({
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "ack_timeout": "3s"},
        "outbox": {"poll_interval": "100ms"},
    })
    return base.model_copy(update={"adapters": list(adapters)})


def metric(name: str, **labels: str) -> float:
    return METRICS.get_sample_value(name, labels) or 0.0


async def wait_until(predicate: Any, timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_crashing_adapter_is_restarted_while_the_other_keeps_running(
        tmp_path: Path, nats_server: NatsServer) -> None:
    cfg = make_config(tmp_path, nats_server.url,
                      ToyConfig(name="crashy", type="t_plain", fail_times=2, rows=7),
                      ToyConfig(name="steady", type="t_plain", rows=4))
    restarts_before = metric("cdc_adapter_restarts_total", adapter="crashy")
    captured_before = metric("cdc_events_captured_total", adapter="crashy", table="items")
    daemon = Daemon(cfg, ready_grace_s=0.3, state_interval_s=0.2)
    run = asyncio.create_task(daemon.run())
    try:
        async def steady_arrived() -> bool:
            msgs = await read_stream(nats_server.url, subject="cdc.steady.>")
            return len(msgs) == 4

        await wait_until(steady_arrived, what="steady adapter's events")
        # the steady adapter flowed while the crashy one was still failing
        async def crashy_arrived() -> bool:
            msgs = await read_stream(nats_server.url, subject="cdc.crashy.>")
            return len(msgs) == 7

        await wait_until(crashy_arrived, what="crashy adapter's events after restarts")
        await wait_until(lambda: daemon.adapters["crashy"].state == "running")
        assert PlainAdapter.starts["crashy"] == 3
        assert daemon.adapters["crashy"].restarts == 2
        assert daemon.adapters["steady"].restarts == 0
        assert "simulated crash #2" in (daemon.adapters["crashy"].last_error or "")
        assert metric("cdc_adapter_restarts_total", adapter="crashy") - restarts_before == 2
        assert metric("cdc_adapter_up", adapter="crashy") == 1.0
        assert metric("cdc_events_captured_total", adapter="crashy",
                      table="items") - captured_before == 7
        ready, detail = daemon.readiness()
        assert ready, detail
        def published_restarts() -> int | None:  # the control heartbeat: every 0.2 s
            live = ControlDb(control_path(cfg.state_dir)).read_state()
            return live.state["adapters"]["crashy"]["restarts"] if live else None

        await wait_until(lambda: published_restarts() == 2, what="restarts in the heartbeat")
    finally:
        daemon.request_stop()
        code = await asyncio.wait_for(run, 30)
    assert code == 0
    msgs = await read_stream(nats_server.url)
    ids = [m.body["id"] for m in msgs]
    assert len(ids) == len(set(ids)) == 11


async def test_fatal_error_stops_the_daemon_with_exit_1(
        tmp_path: Path, nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_config(tmp_path, nats_server.url,
                      ToyConfig(name="denied", type="t_plain", fatal=True),
                      ToyConfig(name="fine", type="t_plain", rows=2))
    daemon = Daemon(cfg, ready_grace_s=0.3, state_interval_s=0.2)
    code = await asyncio.wait_for(daemon.run(), 30)
    assert code == 1
    assert PlainAdapter.starts["denied"] == 1  # not retried
    assert daemon.adapters["denied"].state == "failed"
    assert "permission denied for table items" in caplog.text
    assert "denied: fatal" in caplog.text


def _collect(lines: list[str]) -> Any:
    def echo(message: str = "", err: bool = False, nl: bool = True) -> None:
        lines.append(message)
    return echo


async def test_snapshot_request_reaches_the_running_daemon(
        tmp_path: Path, nats_server: NatsServer) -> None:
    cfg = make_config(tmp_path, nats_server.url,
                      ToyConfig(name="snap", type="t_snap", rows=35),
                      ToyConfig(name="plain", type="t_plain", rows=1))
    daemon = Daemon(cfg, ready_grace_s=0.3, state_interval_s=0.2)
    run = asyncio.create_task(daemon.run())
    try:
        await wait_until(lambda: daemon.readiness()[0], what="ready")
        lines: list[str] = []
        code = await asyncio.to_thread(request_snapshot, cfg, "snap", ["items"],
                                       timeout_s=30, echo=_collect(lines))
        assert code == 0, lines
        assert any("done, 35 rows read" in line for line in lines), lines

        async def reads_arrived() -> bool:
            return len(await read_stream(nats_server.url, subject="cdc.snap._.items.r")) == 35

        await wait_until(reads_arrived, what="35 snapshot reads in the stream")

        # a type without SupportsSnapshot: refused by the CLI, and by the daemon
        lines.clear()
        code = await asyncio.to_thread(request_snapshot, cfg, "plain", None,
                                       echo=_collect(lines))
        assert code == 2
        assert "not supported by this adapter type (t_plain)" in lines[-1]
        control = ControlDb(control_path(cfg.state_dir))
        rid = control.submit("snapshot", "plain", None)

        def finished() -> Any:
            req = control.get(rid)
            return req if req and req.status in (DONE, FAILED) else None

        req = await wait_until(finished, what="daemon answer")
        assert req.status == FAILED
        assert "not supported by this adapter type" in (req.message or "")
        lines.clear()
        assert await asyncio.to_thread(request_snapshot, cfg, "nosuch", None,
                                       echo=_collect(lines)) == 2
        assert "no adapter named 'nosuch'" in lines[-1]
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(run, 30) == 0
