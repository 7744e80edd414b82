"""The shared back-off policy (:mod:`cdc_bridge.kernel.backoff`), as pure logic.

No servers and no real waiting: delays are read from the policy, or recorded by an
injected sleep function that returns at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from cdc_bridge.kernel.backoff import Backoff, Policy, Retry, retrying
from cdc_bridge.kernel.errors import FatalError, SourceUnavailable

log = logging.getLogger("test.backoff")


class Recorder:
    """An injected sleep: records each requested delay, returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


# -- the policy ---------------------------------------------------------------------------


def test_policy_doubles_from_initial_and_caps_at_max() -> None:
    policy = Policy(initial_s=0.1, max_s=1.0, jitter_s=0.0)
    assert [policy.delay(n) for n in range(1, 8)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])


def test_policy_base_is_non_decreasing_and_bounded_for_any_attempt() -> None:
    policy = Policy(initial_s=0.1, max_s=30.0, jitter_s=0.0)
    bases = [policy.base(n) for n in (*range(0, 200), 10**6, 10**12)]  # no overflow
    assert all(a <= b for a, b in itertools.pairwise(bases))
    assert bases[-1] == 30.0


def test_jitter_adds_between_zero_and_jitter_s() -> None:
    policy = Policy(initial_s=1.0, max_s=4.0, jitter_s=0.5)
    for n in (1, 2, 3, 10):
        samples = [policy.delay(n) - policy.base(n) for _ in range(500)]
        assert all(0.0 <= j <= 0.5 for j in samples)
        assert max(samples) - min(samples) > 0.1, "the jitter is random, not constant"


def test_negative_times_are_refused() -> None:
    with pytest.raises(ValueError):
        Policy(initial_s=-1.0)


def test_retrying_waits_by_the_policy() -> None:
    wait = retrying("x", log, initial_s=0.25, max_s=2.0, jitter_s=0.0).wait
    assert isinstance(wait, Policy)
    assert (wait.initial_s, wait.max_s, wait.jitter_s) == (0.25, 2.0, 0.0)


# -- retrying -----------------------------------------------------------------------------


async def test_retrying_retries_retryable_errors_with_growing_waits(
        caplog: pytest.LogCaptureFixture) -> None:
    sleep = Recorder()
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 5:
            raise SourceUnavailable(f"down {calls}")
        return "ok"

    with caplog.at_level(logging.WARNING, logger=log.name):
        result: str = await retrying("read source", log, initial_s=0.1, max_s=0.3, jitter_s=0.0,
                                sleep=sleep)(flaky)
    assert result == "ok" and calls == 5
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.3, 0.3])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"read source failed (attempt {n}): down {n}; retrying in {d}s"
                     for n, d in ((1, "0.1"), (2, "0.2"), (3, "0.3"), (4, "0.3"))]


async def test_retrying_as_a_loop_and_with_named_errors() -> None:
    sleep = Recorder()
    calls = 0
    async for attempt in retrying("connect", log, retry_on=(OSError,), jitter_s=0.0,
                                  sleep=sleep):
        with attempt:
            calls += 1
            if calls < 3:
                raise ConnectionRefusedError("refused")
    assert calls == 3 and len(sleep.delays) == 2


async def test_retrying_does_not_retry_other_errors() -> None:
    sleep = Recorder()

    async def broken() -> None:
        raise FatalError("bad password")

    with pytest.raises(FatalError, match="bad password"):
        await retrying("x", log, sleep=sleep)(broken)
    assert sleep.delays == []


async def test_retrying_gives_up_after_the_deadline_with_the_last_error() -> None:
    sleep = Recorder()

    async def down() -> None:
        raise SourceUnavailable("still down")

    with pytest.raises(SourceUnavailable, match="still down"):
        await retrying("x", log, deadline_s=0.0, sleep=sleep)(down)
    assert sleep.delays == []  # the deadline had passed after the first attempt


async def test_on_retry_replaces_the_log_line(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Retry] = []
    calls = 0

    async def twice() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise SourceUnavailable("blip")

    with caplog.at_level(logging.DEBUG, logger=log.name):
        await retrying("op", log, initial_s=1.0, jitter_s=0.0, on_retry=seen.append,
                       sleep=Recorder())(twice)
    assert [(r.what, r.attempt, str(r.error), r.delay) for r in seen] == [
        ("op", 1, "blip", 1.0), ("op", 2, "blip", 2.0)]
    assert isinstance(seen[0].error, SourceUnavailable)
    assert not caplog.records


# -- Backoff ------------------------------------------------------------------------------


def test_backoff_next_delay_grows_and_reset_starts_over() -> None:
    backoff = Backoff("x", log, initial_s=0.5, max_s=2.0, jitter_s=0.0)
    assert [backoff.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    assert backoff.attempt == 4
    backoff.reset()
    assert backoff.next_delay() == 0.5


async def test_backoff_wait_reports_and_sleeps(caplog: pytest.LogCaptureFixture) -> None:
    sleep = Recorder()
    backoff = Backoff("fetch", log, initial_s=1.0, max_s=10.0, jitter_s=0.0, sleep=sleep)
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert await backoff.wait(OSError("gone")) is False
        assert await backoff.wait("exited with 1") is False
    assert sleep.delays == [1.0, 2.0]
    assert [r.getMessage() for r in caplog.records] == [
        "fetch failed (attempt 1): gone; retrying in 1.0s",
        "fetch failed (attempt 2): exited with 1; retrying in 2.0s"]


async def test_backoff_wait_with_a_custom_report() -> None:
    seen: list[Retry] = []
    backoff = Backoff("server", log, initial_s=0.5, jitter_s=0.0, on_retry=seen.append,
                      sleep=Recorder())
    await backoff.wait("exited with 3")
    assert seen == [Retry("server", 1, "exited with 3", 0.5)]


async def test_backoff_wait_ends_when_stop_is_set() -> None:
    async def long_sleep(delay: float) -> None:
        await asyncio.sleep(60)

    stop = asyncio.Event()
    backoff = Backoff("x", log, initial_s=60.0, max_s=60.0, sleep=long_sleep)
    asyncio.get_running_loop().call_later(0.005, stop.set)
    started = time.monotonic()
    assert await backoff.wait("e", stop=stop) is True
    assert time.monotonic() - started < 1.0
    # already set: no wait at all (the failure is still counted)
    assert await backoff.wait("e", stop=stop) is True
    assert backoff.attempt == 2


async def test_backoff_wait_without_stop_runs_its_full_delay() -> None:
    sleep = Recorder()
    stop = asyncio.Event()
    backoff = Backoff("x", log, initial_s=0.001, jitter_s=0.0, sleep=sleep)
    assert await backoff.wait("e", stop=stop) is False
    assert sleep.delays == [0.001]


async def test_backoff_wait_is_cancellable() -> None:
    async def long_sleep(delay: float) -> None:
        await asyncio.sleep(60)

    before = asyncio.all_tasks()
    for stop in (None, asyncio.Event()):
        backoff = Backoff("x", log, initial_s=60.0, sleep=long_sleep)
        task = asyncio.create_task(backoff.wait("e", stop=stop))
        await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert asyncio.all_tasks() == before, "no helper task left behind"
