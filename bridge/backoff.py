"""The one back-off policy of the bridge: exponential with jitter, on tenacity.

Every retry loop (relay publishing, adapter restarts, reconnects) uses
:func:`retrying`, so behaviour and logging are the same everywhere: retry only
:class:`bridge.errors.RetryableError` (and the connection errors a caller names), wait
``initial * 2**n`` seconds capped at ``max_s`` plus up to ``jitter_s`` of random jitter,
give up after ``deadline_s`` if one is set, and log one line per failed attempt.
"""

from __future__ import annotations

import logging
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)

from bridge.errors import RetryableError


def _log_before_sleep(log: logging.Logger, what: str) -> Any:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed (attempt %d): %s; retrying in %.1fs",
                    what, state.attempt_number, exc, delay)

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
) -> AsyncRetrying:
    """``async for attempt in retrying(...): with attempt: ...``"""
    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait_exponential(multiplier=initial_s, max=max_s) + wait_random(0, jitter_s),
        stop=stop_never if deadline_s is None else stop_after_delay(deadline_s),
        before_sleep=_log_before_sleep(log, what),
        reraise=True,
    )
