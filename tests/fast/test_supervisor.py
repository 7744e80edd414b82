"""Supervision back-off: grows while a task fails without progress (up to ``max_s``),
resets after progress.

The tests record the waits the supervisor asks for (``asyncio.sleep`` is patched to
record and return at once), not wall-clock gaps: a bound on wall-clock time would also
be met by jitter alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import pytest

from cdc_bridge.daemon.supervisor import supervise
from cdc_bridge.kernel.errors import SourceUnavailable


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the code under test asks ``asyncio.sleep`` for (it does not wait them)."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float, *args: Any, **kwargs: Any) -> Any:
        delays.append(delay)
        return await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return delays


async def _restart_gaps(progress_each_run: bool, runs: int = 6, initial_s: float = 0.02,
                        max_s: float = 5.0, jitter_s: float = 0.5) -> list[float]:
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

    await asyncio.wait_for(
        supervise("t", run_once, logging.getLogger("test"), initial_s=initial_s, max_s=max_s,
                  jitter_s=jitter_s, progress=lambda: done), 10)
    return [b - a for a, b in itertools.pairwise(starts)]


async def test_backoff_grows_without_progress_up_to_max_s(asked: list[float]) -> None:
    gaps = await _restart_gaps(progress_each_run=False, runs=9, initial_s=1.0, max_s=8.0,
                               jitter_s=0.0)
    assert len(gaps) == 8
    # without jitter the requested delays are the policy itself: doubling, then capped
    assert asked == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0], asked
    assert all(a <= b for a, b in itertools.pairwise(asked)), "never shrinks"
    assert max(asked) == 8.0, "capped at max_s"


async def test_backoff_growth_exceeds_the_jitter(asked: list[float]) -> None:
    jitter_s = 0.5
    await _restart_gaps(progress_each_run=False, runs=9, initial_s=1.0, max_s=8.0,
                        jitter_s=jitter_s)
    assert len(asked) == 8
    bases = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    # each delay is its exponential base plus at most jitter_s ...
    assert all(b <= d <= b + jitter_s for b, d in zip(bases, asked, strict=True)), asked
    # ... so growth is not a jitter effect: the later waits exceed the first by far more
    # than the jitter range, and none exceeds max_s + jitter_s
    assert min(asked[3:]) - asked[0] > 4 * jitter_s, asked
    assert max(asked) <= 8.0 + jitter_s, asked


async def test_backoff_resets_after_progress(asked: list[float]) -> None:
    gaps = await _restart_gaps(progress_each_run=True)
    assert len(gaps) == 5
    # every restart after a productive run waits initial_s, never a grown back-off
    assert asked == [0.02] * 5, asked
