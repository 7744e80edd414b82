"""Supervision of long-running tasks (adapters, the relay): restart with back-off, report.

:func:`supervise` runs ``run_once`` until it returns. Any failure other than a
:class:`cdc_bridge.kernel.errors.FatalError` is reported (``on_failure``) and ``run_once`` is
started again after the shared back-off (:func:`cdc_bridge.kernel.backoff.retrying`: exponential
with jitter, one log line per failed attempt). An unexpected exception (a bug, a driver
error nobody classified) is wrapped into :class:`TaskCrashed`, which is retryable: one
misbehaving adapter must not stop the others. A ``FatalError`` propagates: the daemon
then stops with a clear message.

A task that ran healthily for ``healthy_after_s`` before failing, or that made progress
in its last run (``progress()`` went up: e.g. batches committed), starts over with the
shortest delay: an adapter that fails once a day, or several sources hit by a burst of
short outages, is not penalised by earlier attempts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from cdc_bridge.kernel.backoff import retrying
from cdc_bridge.kernel.errors import FatalError, RetryableError


class TaskCrashed(RetryableError):
    """An unexpected exception in a supervised task; the task is restarted."""


class _HealthyRunEnded(Exception):
    """Internal: the failed run was healthy (long or productive): reset the back-off."""


async def supervise(
    what: str,
    run_once: Callable[[], Awaitable[None]],
    log: logging.Logger,
    *,
    on_failure: Callable[[BaseException], None] = lambda e: None,
    on_restart: Callable[[], None] = lambda: None,
    initial_s: float = 0.5,
    max_s: float = 30.0,
    jitter_s: float = 0.5,
    healthy_after_s: float = 60.0,
    progress: Callable[[], int] = lambda: 0,
) -> None:
    """Run ``run_once`` until it returns, restarting it on non-fatal failures."""
    first = True
    while True:
        try:
            async for attempt in retrying(what, log, initial_s=initial_s, max_s=max_s,
                                          jitter_s=jitter_s, retry_on=(RetryableError,)):
                with attempt:
                    if not first:
                        on_restart()
                    first = False
                    started = time.monotonic()
                    done_before = progress()
                    try:
                        await run_once()
                        return
                    except FatalError:
                        raise
                    except Exception as e:
                        on_failure(e)
                        if not isinstance(e, RetryableError):
                            log.error("%s crashed: %s: %s", what, type(e).__name__, e,
                                      exc_info=e)
                        healthy = time.monotonic() - started >= healthy_after_s
                        if healthy or progress() > done_before:
                            raise _HealthyRunEnded() from e
                        if isinstance(e, RetryableError):
                            raise
                        raise TaskCrashed(f"{type(e).__name__}: {e}") from e
        except _HealthyRunEnded as ended:
            log.warning("%s failed after a healthy run: %s; restarting in %.1fs", what,
                        ended.__cause__, initial_s)
            await asyncio.sleep(initial_s)
