"""What JetStream says about the bridge's streams, for the status page, cached briefly.

The status page shows each durable consumer of the stream (pending, ack floor) and the
latest dead letters of ``<STREAM>_DLQ``. Neither is known to the daemon: both are asked
of JetStream here, on a connection of this module's own (the relay's lives in another
process; the readiness probe's only exists while the relay is disconnected), opened on
the first request and again after it drops (no background reconnects: a view nobody
looks at costs nothing).

Answers are cached for :data:`TTL_S`, so a page polled by several browsers asks
JetStream at most that often; a request finding the cache stale waits (bounded) for one
refresh shared by all. Dead letters are read one message at a time from the newest
sequence down (``STREAM.MSG.GET``: no consumer is created), and only again when the
dead-letter stream changed. Bodies are never read into the answer: subject, time, the
``Cdc-Reason`` header (redacted and shortened) and the original subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from cdc_bridge.kernel.errors import BridgeError
from cdc_bridge.kernel.events import dead_letter_stream
from cdc_bridge.kernel.wire import ORIGINAL_SUBJECT, REASON
from cdc_bridge.relay.publisher import connect_options
from cdc_bridge.relay.settings import NatsConfig

log = logging.getLogger("cdc_bridge.http")

#: Seconds an answer is reused.
TTL_S = 2.0
#: Seconds a request waits for a refresh before it takes the cached answer.
WAIT_S = 2.5
#: Dead letters shown, newest first.
LATEST_DEAD_LETTERS = 10
#: Longest reason shown.
REASON_CHARS = 300

_ERRORS = (TimeoutError, OSError, nats.errors.Error, BridgeError)


class JetStreamView:
    def __init__(self, cfg: NatsConfig, redact: Callable[[str], str]) -> None:
        self.cfg = cfg
        self.redact = redact
        self.stream = cfg.stream
        self.dlq = dead_letter_stream(cfg.stream)
        self._nc: NATS | None = None
        self._cache: dict[str, Any] = {"error": "not asked yet", "stream": None,
                                       "consumers": [], "dead_letters": None}
        self._fetched = -1e9
        self._refresh: asyncio.Task[None] | None = None
        self._dlq_mark: tuple[int, int] | None = None

    async def read(self) -> dict[str, Any]:
        """The latest answer, refreshed first if older than :data:`TTL_S`."""
        if time.monotonic() - self._fetched >= TTL_S:
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.create_task(self._update(), name="jetstream-view")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._refresh), WAIT_S)
        return dict(self._cache)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        await self._drop()

    async def _drop(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _js(self) -> JetStreamContext:
        if self._nc is None or not self._nc.is_connected:
            await self._drop()
            opts = connect_options(self.cfg, reconnect=False)
            opts["name"] = "cdc-bridge-status"
            self._nc = await nats.connect(**opts, error_cb=_quiet, disconnected_cb=_none,
                                          closed_cb=_none)
        return self._nc.jetstream(timeout=2.0)

    async def _update(self) -> None:
        try:
            js = await self._js()
            stream, consumers = await self._consumers(js)
            dead = await self._dead_letters(js)
            self._cache = {"error": None, "stream": stream, "consumers": consumers,
                           "dead_letters": dead}
        except _ERRORS as e:
            self._cache = {**self._cache, "error": self.redact(
                f"JetStream not reachable: {type(e).__name__}: {e}")[:200]}
            await self._drop()
        finally:
            self._fetched = time.monotonic()

    async def _consumers(self, js: JetStreamContext) -> tuple[dict[str, Any] | None,
                                                              list[dict[str, Any]]]:
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            return None, []
        stream = {"name": self.stream, "messages": info.state.messages,
                  "bytes": info.state.bytes, "last_seq": info.state.last_seq}
        out = []
        for c in await js.consumers_info(self.stream):
            durable = c.config.durable_name
            if not durable:
                continue  # ephemeral: a tail, a replay; not someone's position
            floor = c.ack_floor.stream_seq if c.ack_floor else 0
            out.append({"name": durable, "pending": c.num_pending or 0,
                        "ack_pending": c.num_ack_pending or 0,
                        "redelivered": c.num_redelivered or 0,
                        "ack_floor": floor or 0,
                        "filter": c.config.filter_subject or ""})
        out.sort(key=lambda row: str(row["name"]))
        return stream, out

    async def _dead_letters(self, js: JetStreamContext) -> dict[str, Any] | None:
        try:
            info = await js.stream_info(self.dlq)
        except nats.js.errors.NotFoundError:
            self._dlq_mark = None
            return None
        st = info.state
        mark = (st.last_seq, st.messages)
        cached = self._cache.get("dead_letters")
        if mark == self._dlq_mark and cached is not None:
            return dict(cached)
        latest: list[dict[str, Any]] = []
        seq = st.last_seq
        tries = 4 * LATEST_DEAD_LETTERS
        while seq >= max(1, st.first_seq) and len(latest) < LATEST_DEAD_LETTERS and tries:
            tries -= 1
            try:
                msg = await js.get_msg(self.dlq, seq)
            except nats.js.errors.NotFoundError:  # deleted (redriven)
                seq -= 1
                continue
            headers = msg.headers or {}
            latest.append({
                "seq": msg.seq or seq, "subject": msg.subject or "",
                "time": msg.time.isoformat() if msg.time else None,
                "reason": self.redact(str(headers.get(REASON, "")))[:REASON_CHARS],
                "original_subject": str(headers.get(ORIGINAL_SUBJECT, ""))})
            seq -= 1
        self._dlq_mark = mark
        return {"stream": self.dlq, "total": st.messages, "latest": latest}


async def _quiet(exc: Exception) -> None:
    log.debug("status view: %s", exc)


async def _none() -> None:
    return None
