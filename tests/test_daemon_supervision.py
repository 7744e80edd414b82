"""The daemon in-process with test-only adapter types, against a real nats-server.

Covers supervision (a crashing adapter is restarted with back-off, reported in metrics
and state, while another adapter keeps flowing; a FatalError stops the daemon with exit
code 1) and on-demand snapshots through the control channel (the CLI client side
against the running daemon, progress, "not supported" for types without the protocol).
The test types are registered by monkeypatching ``adapters.registry.REGISTRY``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from adapters.base import AdapterConfig, ChangeBatch, Checkpoint
from adapters.registry import REGISTRY, AdapterContext, AdapterType
from bridge.config import BridgeConfig
from bridge.control import DONE, FAILED, ControlDb, control_path
from bridge.daemon import Daemon
from bridge.errors import SourceSetupError
from bridge.events import ChangeEvent
from bridge.metrics import REGISTRY as METRICS
from bridge.snapshot_cli import request_snapshot
from tests.helpers import read_stream
from tests.services.nats_server import NatsServer


class ToyConfig(AdapterConfig):
    type: Literal["t_plain", "t_snap"]
    fail_times: int = 0
    fatal: bool = False
    rows: int = 5


class PlainAdapter:
    """Emits ``rows`` inserts, then idles; crashes on its first ``fail_times`` starts."""

    starts: ClassVar[dict[str, int]] = {}

    def __init__(self, cfg: ToyConfig) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.requests: asyncio.Queue[list[str] | None] = asyncio.Queue()

    def _event(self, i: int, op: Literal["c", "r"], position: str) -> ChangeEvent:
        return ChangeEvent(adapter=self.name, table="items", op=op, position=position,
                           key={"id": i}, after={"id": i, "v": f"row {i}"})

    async def changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        n = self.starts[self.name] = self.starts.get(self.name, 0) + 1
        await asyncio.sleep(0.05)
        if self.cfg.fatal:
            raise SourceSetupError("permission denied for table items (simulated)")
        if n <= self.cfg.fail_times:
            raise RuntimeError(f"simulated crash #{n}")
        start = int((checkpoint or {}).get("n", 0))
        for i in range(start, self.cfg.rows):
            yield ChangeBatch([self._event(i, "c", f"c:{i}")], {"n": i + 1})
        snapshots = 0
        while True:
            await self.requests.get()
            snapshots += 1
            for base in range(0, self.cfg.rows, 10):
                await asyncio.sleep(0.05)
                yield ChangeBatch([self._event(i, "r", f"snap{snapshots}:{i}")
                                   for i in range(base, min(base + 10, self.cfg.rows))], None)

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        return None

    async def close(self) -> None:
        return None


class SnapAdapter(PlainAdapter):
    async def request_snapshot(self, tables: list[str] | None) -> None:
        self.requests.put_nowait(tables)


def _factory(cfg: AdapterConfig, context: AdapterContext) -> Any:
    assert isinstance(cfg, ToyConfig)
    return SnapAdapter(cfg) if cfg.type == "t_snap" else PlainAdapter(cfg)


@pytest.fixture(autouse=True)
def toy_types(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("t_plain", "t_snap"):
        monkeypatch.setitem(REGISTRY, name, AdapterType(name, ToyConfig, _factory))
    PlainAdapter.starts.clear()
    yield


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
        live = ControlDb(control_path(cfg.state_dir)).read_state()
        assert live is not None and live.state["adapters"]["crashy"]["restarts"] == 2
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
