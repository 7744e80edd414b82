"""JetStream publisher: connection, stream set-up, and one pipelined batch publish.

:class:`Publisher` wraps nats-py so the rest of the bridge sees state and exceptions,
not callbacks: connection state changes become log lines, transient failures become
:class:`bridge.errors.PublishUnavailable`, and per-message rejections that retrying
cannot fix (too large, rejected by the stream) are reported back as *poison* so the
relay can dead-letter them and carry on.

:meth:`Publisher.publish_batch` sends a whole batch with ``publish_async`` (bounded
in flight by nats-py's semaphore), then awaits every PubAck under one timeout and
checks each one (stream name, duplicate flag). It returns how many leading messages
are safely stored, so the relay only ever removes a contiguous prefix of the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from bridge.config import NatsConfig
from bridge.errors import ConfigError, PublishUnavailable
from outbox.base import OutboxMessage

log = logging.getLogger("cdc_bridge.publisher")

#: JetStream API error codes that retrying the same message cannot fix.
POISON_ERR_CODES = frozenset({
    10054,  # message size exceeds maximum allowed
    10060,  # expected stream does not match
    10077,  # message would exceed the stream's max bytes per message
})


@dataclass(slots=True)
class BatchResult:
    """Outcome of one batch: ``stored`` leading messages are in the stream."""

    stored: int = 0
    duplicates: int = 0
    poison: list[tuple[int, str]] = field(default_factory=list)  # (index, reason)
    error: BaseException | None = None


def _tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
    if cfg.tls.cert_file:
        ctx.load_cert_chain(str(cfg.tls.cert_file),
                            str(cfg.tls.key_file) if cfg.tls.key_file else None)
    return ctx


def connect_options(cfg: NatsConfig) -> dict[str, Any]:
    """nats-py ``connect`` keyword arguments from the config (auth, TLS, reconnects)."""
    opts: dict[str, Any] = {
        "servers": cfg.servers(),
        "connect_timeout": max(1, int(cfg.connect_timeout)),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "name": "cdc-bridge",
        "pending_size": 64 * 1024 * 1024,
    }
    if cfg.user:
        opts["user"] = cfg.user
        opts["password"] = cfg.password
    if cfg.token:
        opts["token"] = cfg.token
    if cfg.creds_file:
        opts["user_credentials"] = str(cfg.creds_file)
    if cfg.nkey_seed_file:
        opts["nkeys_seed"] = str(cfg.nkey_seed_file)
    tls = _tls_context(cfg)
    if tls is not None:
        opts["tls"] = tls
    return opts


class Publisher:
    def __init__(self, cfg: NatsConfig) -> None:
        self.cfg = cfg
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.max_payload = 1024 * 1024
        self.connected = asyncio.Event()

    # -- connection -------------------------------------------------------------------

    async def _on_disconnected(self) -> None:
        self.connected.clear()
        log.warning("NATS disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        self.connected.set()
        url = self.nc.connected_url.netloc if self.nc and self.nc.connected_url else "?"
        log.info("NATS reconnected to %s", url)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS connection error: %s", exc)

    async def connect(self, max_in_flight: int = 4000) -> None:
        """Connect once (raises :class:`PublishUnavailable`) and make sure the stream exists."""
        if self.nc is None or self.nc.is_closed:
            try:
                self.nc = await nats.connect(
                    **connect_options(self.cfg),
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                )
            except (TimeoutError, OSError, nats.errors.Error) as e:
                self.nc = None
                raise PublishUnavailable(f"cannot connect to NATS: {type(e).__name__}") from e
            self.js = self.nc.jetstream(publish_async_max_pending=max_in_flight,
                                        timeout=self.cfg.ack_timeout)
            self.max_payload = self.nc.max_payload
            log.info("connected to NATS %s", self.nc.connected_url.netloc
                     if self.nc.connected_url else "")
        self.connected.set()
        await self.ensure_stream()

    def stream_config(self) -> api.StreamConfig:
        cfg = self.cfg
        return api.StreamConfig(
            name=cfg.stream,
            subjects=[f"{cfg.subject_prefix}.>"],
            storage=api.StorageType.FILE if cfg.storage == "file" else api.StorageType.MEMORY,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window,
            max_age=cfg.max_age or None,
            max_bytes=cfg.max_bytes,
        )

    async def ensure_stream(self) -> None:
        """Create the stream if missing, or update it to match the config."""
        assert self.js is not None
        wanted = self.stream_config()
        try:
            try:
                info = await self.js.stream_info(self.cfg.stream)
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(wanted)
                log.info("created stream %s for %s.>", self.cfg.stream, self.cfg.subject_prefix)
                return
            have = info.config
            if (have.subjects != wanted.subjects or have.duplicate_window != wanted.duplicate_window
                    or have.num_replicas != wanted.num_replicas
                    or have.max_bytes != wanted.max_bytes
                    or (have.max_age or None) != wanted.max_age):
                await self.js.update_stream(wanted)
                log.info("updated stream %s to match the config", self.cfg.stream)
        except nats.js.errors.BadRequestError as e:
            raise ConfigError([f"nats.stream: JetStream refused stream {self.cfg.stream}: "
                               f"{e.description}"]) from e
        except (TimeoutError, nats.errors.Error, OSError) as e:
            raise PublishUnavailable(f"JetStream not available: {type(e).__name__}: {e}") from e

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), timeout=5)
            except (TimeoutError, nats.errors.Error):
                await self.nc.close()
        self.nc = None
        self.js = None
        self.connected.clear()

    # -- publishing -------------------------------------------------------------------

    def _headers(self, msg: OutboxMessage, extra: dict[str, str]) -> dict[str, str]:
        hdrs = {"Nats-Msg-Id": msg.msg_id}
        if msg.headers:
            hdrs.update(msg.headers)
        hdrs.update(extra)
        return hdrs

    async def publish_batch(
        self, messages: Sequence[OutboxMessage], extra_headers: Sequence[dict[str, str]]
    ) -> BatchResult:
        """Publish ``messages`` pipelined; see the module docstring for the contract."""
        if self.js is None or self.nc is None or self.nc.is_closed:
            raise PublishUnavailable("not connected to NATS")
        js = self.js
        result = BatchResult()
        futures: list[asyncio.Future[api.PubAck] | None] = []
        for i, msg in enumerate(messages):
            if len(msg.payload) > self.max_payload:
                result.poison.append((i, f"payload of {len(msg.payload)} bytes exceeds the "
                                         f"server's max_payload of {self.max_payload}"))
                futures.append(None)
                continue
            try:
                fut = await js.publish_async(msg.subject, msg.payload,
                                             headers=self._headers(msg, extra_headers[i]))
            except nats.errors.MaxPayloadError as e:
                result.poison.append((i, f"payload too large: {e}"))
                futures.append(None)
                continue
            except (nats.errors.Error, OSError) as e:
                break_error = PublishUnavailable(f"publish failed: {type(e).__name__}: {e}")
                return self._collect_partial(futures, result, break_error)
            futures.append(fut)
        pending = [f for f in futures if f is not None]
        if pending:
            done, _ = await asyncio.wait(pending, timeout=self.cfg.ack_timeout)
        return self._collect(futures, result)

    def _collect_partial(self, futures: list[asyncio.Future[api.PubAck] | None],
                         result: BatchResult, error: BaseException) -> BatchResult:
        for f in futures:
            if f is not None and not f.done():
                f.cancel()
        result.error = error
        return self._collect(futures, result, stop_error=error)

    def _collect(self, futures: list[asyncio.Future[api.PubAck] | None], result: BatchResult,
                 stop_error: BaseException | None = None) -> BatchResult:
        poison_at = {i for i, _ in result.poison}
        stored = 0
        for i, fut in enumerate(futures):
            if fut is None:
                if i in poison_at:
                    stored = i + 1
                    continue
                break
            if not fut.done() or fut.cancelled():
                result.error = result.error or PublishUnavailable(
                    f"no PubAck within {self.cfg.ack_timeout}s")
                break
            exc = fut.exception()
            if exc is None:
                ack = fut.result()
                if ack.stream != self.cfg.stream:
                    result.poison.append((i, f"stored in unexpected stream {ack.stream}"))
                if ack.duplicate:
                    result.duplicates += 1
                stored = i + 1
                continue
            if isinstance(exc, nats.js.errors.APIError) and exc.err_code in POISON_ERR_CODES:
                result.poison.append((i, f"rejected by JetStream: {exc.description}"))
                stored = i + 1
                continue
            result.error = PublishUnavailable(f"publish not acknowledged: {type(exc).__name__}: "
                                              f"{exc}")
            break
        for fut in futures[stored:]:
            if fut is not None and not fut.done():
                fut.cancel()
        result.stored = stored
        if stop_error is not None and result.error is None:
            result.error = stop_error
        return result

    async def publish_one(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish a single message awaiting its PubAck (used for dead letters)."""
        if self.js is None:
            raise PublishUnavailable("not connected to NATS")
        try:
            await self.js.publish(subject, payload, headers=headers, timeout=self.cfg.ack_timeout)
        except (TimeoutError, nats.errors.Error, OSError) as e:
            raise PublishUnavailable(f"publish failed: {type(e).__name__}: {e}") from e

    async def last_message_headers(self) -> dict[str, str] | None:
        """Headers of the stream's last message (for restart reconciliation)."""
        if self.js is None:
            return None
        try:
            info = await self.js.stream_info(self.cfg.stream)
            if not info.state.last_seq:
                return None
            msg = await self.js.get_msg(self.cfg.stream, seq=info.state.last_seq)
        except (TimeoutError, nats.errors.Error):
            return None
        return dict(msg.headers or {})
