"""Claim checks: an event too large for one NATS message still reaches its subscribers whole.

When a pending row is larger than the server's ``max_payload`` (or the stream's
``max_msg_size``), the relay (:meth:`cdc_bridge.relay.relay.Relay._send_rows`) first puts
its body into a JetStream object store bucket (:func:`ensure_bucket`: ``<STREAM>_CLAIMS``
unless ``nats.claim_checks.bucket`` says otherwise), then publishes, in the row's place
in the pipeline, a small *reference* (:func:`reference_message`): the same
``Nats-Msg-Id`` and subject, the row's own headers plus ``Cdc-Claim-Bucket``,
``Cdc-Claim-Object``, ``Cdc-Claim-Size`` and ``Cdc-Claim-Digest``, and a body that is the
event's CloudEvent without the row images (``id``, ``type``, ``source``, ``subject``,
``partitionkey``, ``data.op``, ``data.key``, ``data.source``), so order keys, tail and
dead letters still see what it is. ``cdc_bridge.client`` fetches the object, checks its
size and digest, and hands the handler the original event.

Exactly once, in order. The object's name is derived from the event id alone
(:func:`object_name`), and an object already there with the same digest, put within the
duplicate window, is not put again: a relay killed between the put and the publish puts
nothing twice and publishes the reference once (the stream drops a second copy by its
id, like any row). The put happens before the reference is sent, in the sender's one
sequence of publishes, so the reference keeps the row's place. A put that fails
transiently ends the session like a failed publish (retried from the first row not yet
acknowledged); one the bucket refuses, or an event over ``claim_checks.max_size``, makes
the row poison (dead-lettered with its identity, :func:`cdc_bridge.relay.rules.dead_letter`).

Retention. The bucket has the stream's storage, replicas and placement; its objects are
kept the stream's ``max_age`` plus the duplicate window (an object may be put up to that
long before its reference is stored), so an object outlives the event that names it.
A stream without ``max_age`` keeps objects for ever; limits by bytes or count do not
apply to the bucket.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import re
from typing import Any, Literal

import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext, api
from nats.js.object_store import ObjectStore

from cdc_bridge.kernel.errors import ConfigError, PublishUnavailable
from cdc_bridge.kernel.wire import (
    CLAIM_BUCKET,
    CLAIM_DIGEST,
    CLAIM_OBJECT,
    CLAIM_SIZE,
    MSG_ID,
    claim_digest,
)
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.relay.jsconfig import placement, storage_type
from cdc_bridge.relay.settings import NatsConfig

log = logging.getLogger("cdc_bridge.relay")

Outcome = Literal["created", "updated", "up to date"]

#: Object names the store takes as they are (the event ids, UUIDs, are such names).
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_=.-]{1,200}$")
#: What a reference keeps of the event's ``data``: what it is, not the row images.
_KEPT_DATA = ("op", "key", "source")


class ClaimRefused(Exception):
    """The event cannot go by claim check (too large, the bucket refuses): poison."""


def object_name(msg_id: str) -> str:
    """The object of event ``msg_id``: the id itself, or a digest of it if it is unusual."""
    if _PLAIN_NAME.match(msg_id):
        return msg_id
    return "id-" + hashlib.sha256(msg_id.encode()).hexdigest()


def stream_of(bucket: str) -> str:
    """The JetStream stream behind an object store bucket."""
    return f"OBJ_{bucket}"


def reference_body(msg_id: str, subject: str, payload: bytes, claim: dict[str, Any]) -> bytes:
    """The body of a reference: the CloudEvent minus its row images, plus the claim.

    ``claim`` (bucket, object, size, digest) is added as the CloudEvents extension
    attributes ``claimbucket``, ``claimobject``, ``claimsize``, ``claimdigest``. A body
    that is not a JSON object is described by its id and subject only."""
    ce: Any = None
    if payload[:1] == b"{":
        with contextlib.suppress(orjson.JSONDecodeError):
            ce = orjson.loads(payload)
    if isinstance(ce, dict):
        out = {k: v for k, v in ce.items() if k != "data"}
        data = ce.get("data")
        if isinstance(data, dict):
            out["data"] = {k: data[k] for k in _KEPT_DATA if k in data}
    else:
        out = {"id": msg_id, "subject": subject}
    out.update({f"claim{k}": v for k, v in claim.items()})
    return orjson.dumps(out)


def reference_message(msg: OutboxMessage, bucket: str) -> OutboxMessage:
    """The reference that takes ``msg``'s place in the stream (pure)."""
    name = object_name(msg.msg_id)
    digest = claim_digest(msg.payload)
    claim = {"bucket": bucket, "object": name, "size": len(msg.payload), "digest": digest}
    headers = dict(msg.headers or {})
    headers.update({CLAIM_BUCKET: bucket, CLAIM_OBJECT: name,
                    CLAIM_SIZE: str(len(msg.payload)), CLAIM_DIGEST: digest})
    headers.pop(MSG_ID, None)
    return OutboxMessage(msg.msg_id, msg.subject,
                         reference_body(msg.msg_id, msg.subject, msg.payload, claim),
                         headers, msg.created_ms)


def bucket_ttl(cfg: NatsConfig) -> float | None:
    """How long objects are kept: the stream's max_age plus the duplicate window."""
    return cfg.max_age + cfg.duplicate_window if cfg.max_age else None


def bucket_config(cfg: NatsConfig) -> api.ObjectStoreConfig:
    return api.ObjectStoreConfig(
        bucket=cfg.claims_bucket(),
        description=f"cdc-bridge claim checks of stream {cfg.stream}",
        ttl=bucket_ttl(cfg),
        storage=storage_type(cfg),
        replicas=cfg.replicas,
        placement=placement(cfg),
    )


async def ensure_bucket(js: JetStreamContext, cfg: NatsConfig) -> Outcome:
    """Create the claim-check bucket, or bring its replicas and max age in line; say which."""
    wanted = bucket_config(cfg)
    bucket = cfg.claims_bucket()
    name = stream_of(bucket)
    try:
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.create_object_store(bucket, wanted)
            log.info("created claim-check bucket %s (%s, replicas %d, objects kept %s)",
                     bucket, cfg.storage, cfg.replicas,
                     f"{wanted.ttl:g}s" if wanted.ttl else "for ever")
            return "created"
        have = info.config
        if ((have.num_replicas or 1) != cfg.replicas
                or float(have.max_age or 0) != float(wanted.ttl or 0)):
            have.num_replicas = cfg.replicas
            have.max_age = wanted.ttl
            await js.update_stream(have)
            log.info("updated claim-check bucket %s (replicas %d, objects kept %s)", bucket,
                     cfg.replicas, f"{wanted.ttl:g}s" if wanted.ttl else "for ever")
            return "updated"
        return "up to date"
    except nats.js.errors.BadRequestError as e:
        raise ConfigError([f"nats.claim_checks: JetStream refused the claim-check bucket "
                           f"{bucket}: {e.description}"]) from e
    except (TimeoutError, nats.errors.Error, OSError) as e:
        raise PublishUnavailable(f"JetStream not available: {type(e).__name__}: {e}") from e


def _put_recently(info: api.ObjectInfo, within_s: float) -> bool:
    try:
        when = dt.datetime.fromisoformat(str(info.mtime).replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (dt.datetime.now(dt.UTC) - when).total_seconds() < within_s


class ClaimChecker:
    """Puts oversized events into the bucket and makes their references (one relay)."""

    def __init__(self, cfg: NatsConfig) -> None:
        self.cfg = cfg
        self.bucket = cfg.claims_bucket()
        self.max_size = cfg.claim_checks.max_size
        self._store: tuple[JetStreamContext, ObjectStore] | None = None

    def _store_of(self, js: JetStreamContext) -> ObjectStore:
        if self._store is None or self._store[0] is not js:  # a new connection
            self._store = (js, ObjectStore(self.bucket, stream_of(self.bucket), js))
        return self._store[1]

    async def check_in(self, js: JetStreamContext | None, msg: OutboxMessage) -> OutboxMessage:
        """Put ``msg``'s body in the bucket (unless it is there already) and return its
        reference. :class:`ClaimRefused` if it cannot go by claim check at all,
        :class:`PublishUnavailable` if the put failed and may work later."""
        size = len(msg.payload)
        if size > self.max_size:
            raise ClaimRefused(f"event of {size} bytes exceeds nats.claim_checks.max_size of "
                               f"{self.max_size}")
        if js is None:
            raise PublishUnavailable("not connected to NATS")
        ref = reference_message(msg, self.bucket)
        assert ref.headers is not None
        name, digest = ref.headers[CLAIM_OBJECT], ref.headers[CLAIM_DIGEST]
        store = self._store_of(js)
        try:
            try:
                have = await store.get_info(name)
            except nats.js.errors.NotFoundError:
                have = None
            if (have is not None and have.size == size and have.digest == digest
                    and _put_recently(have, self.cfg.duplicate_window)):
                log.info("event %s (%s): its %d bytes are in bucket %s already", msg.msg_id,
                         msg.subject, size, self.bucket)
                return ref
            await store.put(name, msg.payload,
                            api.ObjectMeta(name=name, description=msg.subject[:512]))
        except nats.js.errors.BadRequestError as e:
            raise ClaimRefused(f"claim-check bucket {self.bucket} refused the event's "
                               f"{size} bytes: {e.description}") from e
        except (TimeoutError, nats.errors.Error, OSError) as e:
            raise PublishUnavailable(f"claim check of event {msg.msg_id} ({size} bytes) not "
                                     f"stored: {type(e).__name__}: {e}") from e
        log.info("event %s (%s): %d bytes put in bucket %s as %s; publishing its reference",
                 msg.msg_id, msg.subject, size, self.bucket, name)
        return ref
