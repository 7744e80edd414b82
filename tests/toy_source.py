"""A toy source for daemon tests: the whole source contract, no external service.

``t_plain`` emits ``rows`` inserts (checkpoint ``{"n": rows sent}``) and then waits;
it can crash on its first ``fail_times`` starts or fail fatally. ``t_snap`` also takes
re-snapshot requests. Tests opt in with the ``toy_types`` fixture, which registers both
types for the duration of the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Literal

import pytest

from cdc_bridge.adapters.contract import AdapterConfig, ChangeBatch, Checkpoint
from cdc_bridge.adapters.registry import REGISTRY, AdapterContext, AdapterType
from cdc_bridge.kernel.errors import SourceSetupError
from cdc_bridge.kernel.events import ChangeEvent


class ToyConfig(AdapterConfig):
    type: Literal["t_plain", "t_snap"]
    fail_times: int = 0
    fatal: bool = False
    rows: int = 5


class PlainAdapter:
    """Emits ``rows`` inserts, then idles; crashes on its first ``fail_times`` starts."""

    starts: ClassVar[dict[str, int]] = {}
    sent = 0

    def __init__(self, cfg: ToyConfig) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.requests: asyncio.Queue[list[str] | None] = asyncio.Queue()
        self.connected = False
        self.closed = 0

    def lag(self) -> dict[str, float]:
        return {"rows": float(self.cfg.rows - self.sent)} if self.connected else {}

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
        start = self.sent = int((checkpoint or {}).get("n", 0))
        self.connected = True
        for i in range(start, self.cfg.rows):
            yield ChangeBatch([self._event(i, "c", f"c:{i}")], {"n": i + 1})
            self.sent = i + 1
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
        self.connected = False
        self.closed += 1


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
