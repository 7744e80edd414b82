"""Supervision back-off: grows while a task fails without progress, resets after progress."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import pytest

from bridge.errors import SourceUnavailable
from bridge.supervisor import supervise


async def _restart_gaps(progress_each_run: bool, runs: int = 6) -> list[float]:
    starts: list[float] = []
    done = 0

    async def run_once() -> None:
        nonlocal done
        starts.append(time.monotonic())
        if len(starts) >= runs:
            return
        if progress_each_run:
            done += 1
        raise SourceUnavailable("blip")

    await supervise("t", run_once, logging.getLogger("test"), initial_s=0.02, max_s=5.0,
                    progress=lambda: done)
    return [b - a for a, b in itertools.pairwise(starts)]


async def test_backoff_grows_without_progress() -> None:
    gaps = await _restart_gaps(progress_each_run=False)
    # exponential: 0.02 * (1 + 2 + 4 + 8 + 16) s at least (jitter only adds)
    assert sum(gaps) >= 0.02 * (1 + 2 + 4 + 8 + 16)


async def test_backoff_resets_after_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[float] = []  # the waits the supervisor asks for, not wall-clock gaps
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        asked.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    gaps = await asyncio.wait_for(_restart_gaps(progress_each_run=True), 10)
    assert len(gaps) == 5
    # every restart after a productive run waits initial_s, never a grown back-off
    assert asked == [0.02] * 5, asked
