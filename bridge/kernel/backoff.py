"""The one back-off policy of the bridge: exponential with jitter, on tenacity.

Every retry loop (relay publishing, adapter restarts, reconnects, the embedded
nats-server's restarts, the consumer's fetches, ``tail``'s connect) uses this module, so
behaviour and logging are the same everywhere: wait ``initial_s * 2**(n-1)`` seconds
after the n-th failed attempt, capped at ``max_s``, plus up to ``jitter_s`` of random
jitter (:class:`Policy`); report each failed attempt once (by default one log line,
:func:`log_retry`; ``on_retry`` replaces it).

Two forms of the same policy:

* :func:`retrying`, for a loop around one awaitable call (tenacity's ``AsyncRetrying``):
  retry only :class:`cdc_bridge.kernel.errors.RetryableError` (and the connection errors a
  caller names), give up before a wait that would end past ``deadline_s``, if one is set;
* :class:`Backoff`, for a loop that is not one call (wait for a process to exit, fetch
  in a loop that also handles idle timeouts): the loop says when an attempt failed
  (:meth:`Backoff.wait`, or :meth:`Backoff.next_delay` to only count it) and when it
  succeeded (:meth:`Backoff.reset`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    stop_never,
)
from tenacity.wait import wait_base

from cdc_bridge.kernel.errors import RetryableError

#: Largest exponent used: ``2.0**1000`` is finite; the cap applies long before.
_MAX_EXPONENT = 1000


@dataclass(frozen=True, slots=True)
class Retry:
    """One failed attempt, as :func:`retrying` and :class:`Backoff` report it."""

    what: str
    #: Failed attempts so far (1 on the first failure; since the last reset).
    attempt: int
    #: The exception (``retrying``) or what the loop passed to :meth:`Backoff.wait`.
    error: BaseException | str | None
    #: Seconds waited before the next attempt.
    delay: float


OnRetry = Callable[[Retry], None]
Sleep = Callable[[float], Awaitable[None]]


def log_retry(log: logging.Logger, level: int = logging.WARNING) -> OnRetry:
    """The standard report: ``<what> failed (attempt n): <error>; retrying in Ns``."""

    def report(retry: Retry) -> None:
        log.log(level, "%s failed (attempt %d): %s; retrying in %.1fs",
                retry.what, retry.attempt, retry.error, retry.delay)

    return report


class Policy(wait_base):
    """Exponential back-off with jitter; a tenacity wait strategy too.

    ``delay(n)`` is the wait after the n-th failed attempt: ``initial_s * 2**(n-1)``
    capped at ``max_s``, plus ``uniform(0, jitter_s)``.
    """

    def __init__(self, initial_s: float = 0.1, max_s: float = 10.0,
                 jitter_s: float = 0.5) -> None:
        if initial_s < 0 or max_s < 0 or jitter_s < 0:
            raise ValueError("back-off times must not be negative")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter_s = jitter_s

    def base(self, attempt: int) -> float:
        """The delay without jitter (non-decreasing in ``attempt``, at most ``max_s``)."""
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        return min(self.initial_s * 2.0 ** exponent, self.max_s)

    def delay(self, attempt: int) -> float:
        jitter = random.uniform(0, self.jitter_s) if self.jitter_s else 0.0
        return self.base(attempt) + jitter

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)  # looked up per call: tests may patch asyncio.sleep


def _before_sleep(what: str, report: OnRetry) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        report(Retry(what, state.attempt_number, exc, delay))

    return before_sleep


def retrying(
    what: str,
    log: logging.Logger,
    *,
    retry_on: tuple[type[BaseException], ...] = (RetryableError,),
    initial_s: float = 0.1,
    max_s: float = 10.0,
    jitter_s: float = 0.5,
    deadline_s: float | None = None,
    on_retry: OnRetry | None = None,
    sleep: Sleep | None = None,
) -> AsyncRetrying:
    """``async for attempt in retrying(...): with attempt: ...``, or
    ``await retrying(...)(fn, *args)``.

    Exceptions not in ``retry_on`` propagate at once; after ``deadline_s`` the last
    error propagates. ``on_retry`` replaces the standard log line (:func:`log_retry`);
    ``sleep`` replaces ``asyncio.sleep`` (tests).
    """
    return AsyncRetrying(
        sleep=sleep or _sleep,
        retry=retry_if_exception_type(retry_on),
        wait=Policy(initial_s, max_s, jitter_s),
        stop=stop_never if deadline_s is None else stop_before_delay(deadline_s),
        before_sleep=_before_sleep(what, on_retry or log_retry(log)),
        reraise=True,
    )


class Backoff:
    """The same policy for a loop that is not one awaitable call.

    After a failed attempt the loop calls :meth:`wait` (counts it, reports it, sleeps
    the policy's delay); after a successful one, :meth:`reset`, so the next failure
    waits ``initial_s`` again. Cancellation during the wait propagates.
    """

    def __init__(self, what: str, log: logging.Logger, *, initial_s: float = 0.1,
                 max_s: float = 10.0, jitter_s: float = 0.5, on_retry: OnRetry | None = None,
                 sleep: Sleep | None = None) -> None:
        self.what = what
        self.policy = Policy(initial_s, max_s, jitter_s)
        self.report = on_retry or log_retry(log)
        self._sleep = sleep or _sleep
        #: Failed attempts since the last :meth:`reset`.
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        """Count a failed attempt and return the delay before the next one (no report)."""
        self.attempt += 1
        return self.policy.delay(self.attempt)

    async def wait(self, error: BaseException | str | None = None,
                   stop: asyncio.Event | None = None) -> bool:
        """Count a failed attempt, report it, sleep its delay.

        With ``stop``, the wait ends as soon as that event is set (or at once if it is
        already set). Returns ``True`` if it ended because of ``stop``.
        """
        delay = self.next_delay()
        self.report(Retry(self.what, self.attempt, error, delay))
        return await self._sleep_unless(delay, stop)

    async def _sleep_unless(self, delay: float, stop: asyncio.Event | None) -> bool:
        if stop is None:
            await self._sleep(delay)
            return False
        if stop.is_set():
            return True
        stopped = asyncio.ensure_future(stop.wait())
        slept = asyncio.ensure_future(self._sleep(delay))
        try:
            await asyncio.wait((stopped, slept), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopped, slept):
                task.cancel()
            await asyncio.gather(stopped, slept, return_exceptions=True)
        return stop.is_set()
