"""JetStream publisher: one connection, the stream, and pipelined publishes with PubAcks.

:class:`Publisher` wraps nats-py so the relay sees state and exceptions, not callbacks.

Connection. The client's own reconnect is switched off (``allow_reconnect=False``):
nats-py would keep publishes made around a disconnect in its buffer and flush them on
the new connection, after messages that were lost on the old one, which reorders a
subject. Instead a lost connection closes the client, every publish awaiting its
PubAck fails at once, and the relay reconnects with the shared back-off and
republishes from its first unacknowledged row. Several server URLs, user/password,
token, NKey seed, ``.creds`` file and TLS (CA, client certificate) come from
:class:`cdc_bridge.config.NatsConfig`. NATS refusing the credentials is fatal (a person
must fix it); everything else is retryable.

Publishing. :meth:`Publisher.send` publishes one message with a reply subject of our
own (``<inbox>.<n>``) and returns at once; a single subscription receives every PubAck
and records it on the message's :class:`Slot` (stream, sequence, duplicate flag, or the
JetStream error), then sets :attr:`Publisher.acked`. This is nats-py's
``publish_async`` done with public calls and without its per-message costs (a random
token, a future and callbacks, a JSON parse into a dataclass), which matters because
the relay is CPU-bound in this process.

Stream. :meth:`Publisher.ensure_stream` creates the stream or updates it to match the
config (subjects, replicas, max age/bytes/message size, duplicate window); a storage
type that differs cannot be changed in place and is reported as a configuration error.
It also ensures the dead-letter stream (:mod:`cdc_bridge.relay.dlq_stream`) and, with
claim checks on, their object store bucket (:mod:`cdc_bridge.relay.claims`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import Any

import nats
import nats.errors
import nats.js.errors
import nkeys
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from cdc_bridge import metrics
from cdc_bridge.kernel.errors import ConfigError, FatalError, PublishUnavailable
from cdc_bridge.kernel.tracecontext import TRACEPARENT
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.relay.jsconfig import placement, storage_type
from cdc_bridge.relay.rules import DUPLICATE, OK, RETRY, message_traceparent, parse_ack
from cdc_bridge.relay.settings import NatsConfig

log = logging.getLogger("cdc_bridge.publisher")

PENDING = 0
EXPECTED_LAST_SEQ = "Nats-Expected-Last-Sequence"
_AUTH_WORDS = ("authorization violation", "authentication", "user authentication expired")


class Slot:
    """One outbox row on its way: filled in by the PubAck (or a failure)."""

    __slots__ = ("ack_seq", "expected_last", "message", "outcome", "reason", "sent_at", "seq",
                 "traceparent")

    def __init__(self, seq: int, message: OutboxMessage) -> None:
        self.seq = seq
        self.message = message
        self.sent_at = 0.0
        self.outcome = PENDING
        self.reason = ""
        self.ack_seq = 0
        #: The ``Nats-Expected-Last-Sequence`` it was sent with (-1: none).
        self.expected_last = -1
        #: The ``traceparent`` header it was sent with ("" until sent).
        self.traceparent = ""


def _tls_context(cfg: NatsConfig) -> ssl.SSLContext | None:
    if cfg.tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
    if cfg.tls.cert_file:
        ctx.load_cert_chain(str(cfg.tls.cert_file),
                            str(cfg.tls.key_file) if cfg.tls.key_file else None)
    return ctx


def _seed_ok(seed: bytes) -> bool:
    try:
        nkeys.from_seed(bytearray(seed.strip()))
    except (nkeys.NkeysError, ValueError):
        return False
    return True


def _after(lines: list[bytes], marker: bytes) -> bytes:
    """The line after the one holding ``marker`` in a ``.creds`` file (empty if none)."""
    for i, line in enumerate(lines[:-1]):
        if marker in line:
            return lines[i + 1].strip()
    return b""


def _check_key_files(cfg: NatsConfig) -> None:
    """Refuse a seed or ``.creds`` file that nats-py would choke on, naming no secret.

    nats-py reads them at every connect: a ``.creds`` file without its user JWT block
    makes it loop forever (blocking the event loop), a bad seed raises a bare
    ``TypeError`` or nkeys error. A file that cannot be read (yet) is left to the connect,
    which retries.
    """
    with contextlib.suppress(OSError):
        if cfg.nkey_seed_file and not _seed_ok(cfg.nkey_seed_file.read_bytes()):
            raise ConfigError([f"nats.nkey_seed_file: {cfg.nkey_seed_file} does not hold "
                               "an NKey seed (S...)"])
    with contextlib.suppress(OSError):
        if cfg.creds_file:
            lines = cfg.creds_file.read_bytes().splitlines()
            if not (_after(lines, b"BEGIN NATS USER JWT")
                    and _seed_ok(_after(lines, b"BEGIN USER NKEY SEED"))):
                raise ConfigError([f"nats.creds_file: {cfg.creds_file} is not a .creds file "
                                   "(a NATS USER JWT block and a USER NKEY SEED block)"])


def connect_options(cfg: NatsConfig, *, reconnect: bool = True) -> dict[str, Any]:
    """nats-py ``connect`` keyword arguments from the config (auth, TLS, timeouts).

    With ``reconnect=False`` (the relay's publisher, see the module docstring) the client
    does not reconnect by itself and tries each server of the list twice per connect;
    other users (tail, init, replay) keep nats-py's endless reconnect.
    """
    opts: dict[str, Any] = {
        "servers": cfg.servers(),
        "connect_timeout": max(1, int(cfg.connect_timeout)),
        "allow_reconnect": reconnect,
        "max_reconnect_attempts": -1 if reconnect else 1,
        "reconnect_time_wait": 1 if reconnect else 0.2,
        "name": "cdc-bridge",
        "pending_size": 64 * 1024 * 1024,
    }
    if cfg.user:
        opts["user"] = cfg.user
        opts["password"] = cfg.password
    if cfg.token:
        opts["token"] = cfg.token
    _check_key_files(cfg)
    if cfg.creds_file:
        opts["user_credentials"] = str(cfg.creds_file)
    if cfg.nkey_seed_file:
        opts["nkeys_seed"] = str(cfg.nkey_seed_file)
    tls = _tls_context(cfg)
    if tls is not None:
        opts["tls"] = tls
        if cfg.tls_hostname:
            opts["tls_hostname"] = cfg.tls_hostname
    return opts


async def connect_once(cfg: NatsConfig) -> NATS:
    """One connection for a one-shot command (init, replay): fails fast, no reconnects."""
    try:
        return await nats.connect(**connect_options(cfg, reconnect=False))
    except (TimeoutError, OSError, nats.errors.Error) as e:
        raise PublishUnavailable(f"cannot connect to NATS at {', '.join(cfg.servers())}"
                                 f": {type(e).__name__}") from e


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in _AUTH_WORDS)


class Publisher:
    def __init__(self, cfg: NatsConfig) -> None:
        self.cfg = cfg
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self.max_payload = 1024 * 1024
        self.stream_subjects: list[str] = [f"{cfg.subject_prefix}.>"]
        self.max_msg_size = cfg.max_msg_size
        #: Set while connected; cleared on loss.
        self.connected = asyncio.Event()
        #: Set by every PubAck or failure; the relay clears it before waiting.
        self.acked = asyncio.Event()
        #: Set when the connection is lost, until the next successful connect.
        self.lost = asyncio.Event()
        self._slots: dict[str, Slot] = {}
        self._reply = ""
        self._plen = 0
        self._counter = 0

    # -- connection -------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _on_disconnected(self) -> None:
        if self.connected.is_set():
            log.warning("NATS disconnected; %d publishes awaiting PubAck will be retried",
                        len(self._slots))
        self._lost("connection to NATS lost")

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS connection error: %s", exc)

    def _lost(self, reason: str) -> None:
        self.connected.clear()
        self.lost.set()
        metrics.NATS_CONNECTED.set(0)
        self.fail_all(reason)

    def fail_all(self, reason: str) -> None:
        """Fail every publish still awaiting its PubAck (their rows will be resent)."""
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            if slot.outcome == PENDING:
                slot.outcome = RETRY
                slot.reason = reason
        self.acked.set()

    def forget(self) -> None:
        """Stop tracking in-flight publishes (after the relay gave up on them)."""
        self._slots.clear()

    async def connect(self) -> None:
        """Connect (raises :class:`PublishUnavailable`), subscribe for PubAcks, check the stream.

        The pipeline depth is the relay's to bound (``outbox.max_in_flight``)."""
        if self.nc is not None and self.nc.is_connected:
            await self.ensure_stream()  # e.g. the stream was deleted under us: recreate it
            return
        await self._drop()
        try:
            nc = await nats.connect(**connect_options(self.cfg, reconnect=False),
                                    disconnected_cb=self._on_disconnected,
                                    error_cb=self._on_error)
        except (TimeoutError, OSError, nats.errors.Error) as e:
            if _is_auth_error(e):
                raise FatalError(f"NATS refused the credentials: {e}") from e
            raise PublishUnavailable(f"cannot connect to NATS: {type(e).__name__}: {e}") from e
        self.nc = nc
        self.js = nc.jetstream(timeout=self.cfg.ack_timeout)
        self.max_payload = nc.max_payload
        self._reply = nc.new_inbox() + "."
        self._plen = len(self._reply)
        try:
            await nc.subscribe(self._reply + "*", cb=self._on_ack,
                               pending_msgs_limit=1_000_000, pending_bytes_limit=256 << 20)
            await self.ensure_stream()
        except BaseException:
            await self._drop()
            raise
        self.lost.clear()
        self.connected.set()
        metrics.NATS_CONNECTED.set(1)
        log.info("connected to NATS %s (max_payload %d)",
                 nc.connected_url.netloc if nc.connected_url else "?", self.max_payload)

    async def _drop(self) -> None:
        nc, self.nc, self.js = self.nc, None, None
        self.connected.clear()
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                await asyncio.wait_for(nc.close(), 5)

    async def close(self) -> None:
        """Close the connection (the relay has already waited for its PubAcks)."""
        self.fail_all("publisher closed")
        await self._drop()
        metrics.NATS_CONNECTED.set(0)

    # -- stream -----------------------------------------------------------------------

    def stream_config(self) -> api.StreamConfig:
        cfg = self.cfg
        return api.StreamConfig(
            name=cfg.stream,
            subjects=[f"{cfg.subject_prefix}.>"],
            storage=storage_type(cfg),
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window,
            max_age=cfg.max_age or None,
            max_bytes=cfg.max_bytes,
            max_msg_size=cfg.max_msg_size,
            placement=placement(cfg),
        )

    @staticmethod
    def _differs(have: api.StreamConfig, want: api.StreamConfig) -> list[str]:
        out = []
        if sorted(have.subjects or []) != sorted(want.subjects or []):
            out.append("subjects")
        for name in ("num_replicas", "duplicate_window", "max_bytes", "max_msg_size"):
            if (getattr(have, name) or -1) != (getattr(want, name) or -1):
                out.append(name)
        if (have.max_age or 0) != (want.max_age or 0):
            out.append("max_age")
        if want.placement is not None and (
                (have.placement.cluster if have.placement else None) != want.placement.cluster
                or sorted((have.placement.tags if have.placement else None) or [])
                != sorted(want.placement.tags or [])):
            out.append("placement")
        return out

    async def ensure_stream(self) -> None:
        """Create the stream if missing, or update it to match the config."""
        assert self.js is not None
        wanted = self.stream_config()
        try:
            try:
                info = await self.js.stream_info(self.cfg.stream)
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(wanted)
                log.info("created stream %s for %s.> (%s, replicas %d)", self.cfg.stream,
                         self.cfg.subject_prefix, self.cfg.storage, self.cfg.replicas)
                info = await self.js.stream_info(self.cfg.stream)
            else:
                have = info.config
                have_storage = str(getattr(have.storage, "value", have.storage))
                if have.storage is not None and have_storage != self.cfg.storage:
                    raise ConfigError([
                        f"nats.storage: stream {self.cfg.stream} exists with storage "
                        f"{have_storage}; JetStream cannot change it in place"])
                changed = self._differs(have, wanted)
                if "num_replicas" in changed and "placement" in changed:
                    # JetStream cannot "move and scale a stream in a single update": scale
                    # where it is, then move
                    scaled = api.StreamConfig.from_response(wanted.as_dict())
                    scaled.placement = have.placement
                    await self.js.update_stream(scaled)
                if changed:
                    info = await self._update_stream(wanted)
                    log.info("updated stream %s to match the config (%s)", self.cfg.stream,
                             ", ".join(changed))
        except nats.js.errors.BadRequestError as e:
            raise ConfigError([f"nats.stream: JetStream refused stream {self.cfg.stream}: "
                               f"{e.description}"]) from e
        except (TimeoutError, nats.errors.Error, OSError) as e:
            raise PublishUnavailable(f"JetStream not available: {type(e).__name__}: {e}") from e
        self.stream_subjects = list(info.config.subjects or self.stream_subjects)
        self.max_msg_size = info.config.max_msg_size or -1
        from cdc_bridge.relay.dlq_stream import dlq_stream_config, ensure_dlq_stream

        await ensure_dlq_stream(self.js, self.cfg)  # dead letters' own stream, own subjects
        self.stream_subjects += dlq_stream_config(self.cfg).subjects or []
        if self.cfg.claim_checks.enabled:
            from cdc_bridge.relay.claims import ensure_bucket

            await ensure_bucket(self.js, self.cfg)  # where oversized events' bodies go
        if self.cfg.schema_registry.enabled:
            from cdc_bridge.relay.registry import ensure_registry

            await ensure_registry(self.js, self.cfg)  # every table's schema versions

    async def _update_stream(self, wanted: api.StreamConfig) -> api.StreamInfo:
        """Update the stream, waiting (bounded) while a previous change still settles."""
        assert self.js is not None
        deadline = time.monotonic() + max(30.0, 3 * self.cfg.ack_timeout)
        while True:
            try:
                return await self.js.update_stream(wanted)
            except nats.js.errors.BadRequestError as e:
                if ("in progress" not in (e.description or "")
                        or time.monotonic() > deadline):
                    raise
            await asyncio.sleep(0.25)

    # -- publishing -------------------------------------------------------------------

    async def send(self, slot: Slot, expected_last: int = -1) -> None:
        """Publish ``slot``'s message; its PubAck lands on the slot later.

        Its ``traceparent`` header is the message's own (routed messages, dead letters),
        else its body's attribute (copied byte for byte, so the two are equal), else the
        one derived from its id (rows stored by a version before trace context).

        ``expected_last`` >= 0: the message carries ``Nats-Expected-Last-Sequence``, so
        JetStream stores it only if the stream's last sequence (counting the messages
        in flight ahead of it) is that one (the relay's chain, see its docstring)."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            raise PublishUnavailable("not connected to NATS")
        msg = slot.message
        headers = {"Nats-Msg-Id": msg.msg_id}
        if msg.headers:
            headers.update(msg.headers)
            headers["Nats-Msg-Id"] = msg.msg_id
        headers[TRACEPARENT] = slot.traceparent = message_traceparent(msg)
        if expected_last >= 0:
            headers[EXPECTED_LAST_SEQ] = str(expected_last)
        slot.expected_last = expected_last
        self._counter += 1
        token = str(self._counter)
        self._slots[token] = slot
        slot.sent_at = time.monotonic()
        try:
            await nc.publish(msg.subject, msg.payload, reply=self._reply + token,
                             headers=headers)
        except (nats.errors.Error, OSError) as e:
            self._slots.pop(token, None)
            raise PublishUnavailable(f"publish failed: {type(e).__name__}: {e}") from e

    async def _on_ack(self, msg: Msg) -> None:
        slot = self._slots.pop(msg.subject[self._plen:], None)
        if slot is None:
            return
        hdrs = msg.headers
        if not hdrs:
            try:  # the fast path: a plain PubAck for our stream
                body = orjson.loads(msg.data)
                if "error" not in body and body.get("stream") == self.cfg.stream:
                    slot.ack_seq = body["seq"]
                    slot.outcome = DUPLICATE if body.get("duplicate") else OK
                    self.acked.set()
                    return
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass
        result = parse_ack(msg.data, hdrs.get("Status") if hdrs else None, self.cfg.stream)
        slot.ack_seq, slot.reason, slot.outcome = result.seq, result.reason, result.outcome
        self.acked.set()

    async def publish_one(self, subject: str, payload: bytes, headers: dict[str, str]) -> bool:
        """Publish one message awaiting its PubAck (dead letters); ``True`` if a duplicate."""
        if self.js is None:
            raise PublishUnavailable("not connected to NATS")
        try:
            ack = await self.js.publish(subject, payload, headers=headers,
                                        timeout=self.cfg.ack_timeout)
        except nats.js.errors.APIError as e:
            from cdc_bridge.relay.rules import POISON_ERR_CODES

            if e.err_code in POISON_ERR_CODES:
                raise FatalError(f"JetStream refuses the dead letter on {subject}: "
                                 f"{e.description}") from e
            raise PublishUnavailable(f"dead letter not stored: {e}") from e
        except (TimeoutError, nats.errors.Error, OSError) as e:
            raise PublishUnavailable(f"publish failed: {type(e).__name__}: {e}") from e
        return bool(ack.duplicate)

    async def stream_tail(self) -> tuple[int, str | None]:
        """The stream's last sequence and the ``Nats-Msg-Id`` of the message stored there:
        ``""`` if the stream holds no message, ``None`` if that message cannot be read
        (deleted) or has no id."""
        if self.js is None:
            raise PublishUnavailable("not connected to NATS")
        try:
            info = await self.js.stream_info(self.cfg.stream)
            last = int(info.state.last_seq or 0)
            if not info.state.messages:
                return last, ""
            try:
                raw = await self.js.get_msg(self.cfg.stream, seq=last)
            except nats.js.errors.NotFoundError:
                return last, None
        except (TimeoutError, nats.errors.Error, OSError) as e:
            raise PublishUnavailable(f"cannot read the stream's last message: {e}") from e
        return last, (raw.headers or {}).get("Nats-Msg-Id") or None

    async def last_messages(self, limit: int, since_ms: int) -> list[tuple[str, int]]:
        """(``Nats-Msg-Id``, stored time ms) of up to ``limit`` last messages of the stream,
        newest first, stopping at the first stored before ``since_ms``."""
        if self.js is None:
            return []
        out: list[tuple[str, int]] = []
        try:
            info = await self.js.stream_info(self.cfg.stream)
            seq = info.state.last_seq
            while seq >= max(1, info.state.first_seq) and len(out) < limit:
                try:
                    raw = await self.js.get_msg(self.cfg.stream, seq=seq)
                except nats.js.errors.NotFoundError:
                    seq -= 1
                    continue
                stored_ms = int(raw.time.timestamp() * 1000) if raw.time else 0
                if stored_ms and stored_ms < since_ms:
                    break
                out.append(((raw.headers or {}).get("Nats-Msg-Id", ""), stored_ms))
                seq -= 1
        except (TimeoutError, nats.errors.Error, OSError) as e:
            raise PublishUnavailable(f"cannot read the stream back: {e}") from e
        return out
