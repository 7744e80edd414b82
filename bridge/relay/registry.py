"""The schema registry on NATS: every table version, in a JetStream key-value bucket.

The capture side numbers versions (:mod:`cdc_bridge.outbox.schema_tracker`) and puts a
schema-change event before the first row event of each version; that event's headers
name the registry key of the version (:data:`~cdc_bridge.kernel.wire.SCHEMA_ENTRY`)
and its ``data.entry`` is the registry document. The relay, meeting such a row
(:meth:`cdc_bridge.relay.relay.Relay._send_rows`), first puts the document under its
key, then moves ``<adapter>.<schema>.<table>.latest`` forward (never back: a
republished older event leaves it alone), and only then publishes the event, awaiting
both puts in its one sequence of publishes. So by the time any event naming a version
is in the stream, that version is in the bucket.

A put that fails transiently ends the relay's session like a failed publish (retried
from the first row not yet acknowledged); putting the same document again is harmless.
The bucket (:func:`ensure_registry`: ``<STREAM>_SCHEMAS`` unless
``nats.schema_registry.bucket`` says otherwise) has the stream's storage, replicas and
placement, keeps one revision per key and never expires: it can be read by any
service with NATS access, with no bridge code (``nats kv get CDC_SCHEMAS
shop.public.orders.latest``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from cdc_bridge.kernel.errors import ConfigError, PublishUnavailable
from cdc_bridge.kernel.wire import SCHEMA_ENTRY
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.relay.jsconfig import placement, storage_type
from cdc_bridge.relay.settings import NatsConfig

log = logging.getLogger("cdc_bridge.relay")

Outcome = Literal["created", "updated", "up to date"]


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind a key-value bucket."""
    return f"KV_{bucket}"


def latest_key(version_key: str) -> str:
    """``a.s.t.v3`` -> ``a.s.t.latest``."""
    return version_key.rsplit(".", 1)[0] + ".latest"


def bucket_config(cfg: NatsConfig) -> api.KeyValueConfig:
    return api.KeyValueConfig(
        bucket=cfg.schemas_bucket(),
        description=f"cdc-bridge schema registry of stream {cfg.stream}",
        history=1,
        storage=storage_type(cfg),
        replicas=cfg.replicas,
        placement=placement(cfg),
    )


async def ensure_registry(js: JetStreamContext, cfg: NatsConfig) -> Outcome:
    """Create the registry bucket, or bring its replicas in line; say which."""
    bucket = cfg.schemas_bucket()
    try:
        try:
            info = await js.stream_info(kv_stream(bucket))
        except nats.js.errors.NotFoundError:
            await js.create_key_value(bucket_config(cfg))
            log.info("created schema registry bucket %s (%s, replicas %d)", bucket,
                     cfg.storage, cfg.replicas)
            return "created"
        have = info.config
        if (have.num_replicas or 1) != cfg.replicas:
            have.num_replicas = cfg.replicas
            await js.update_stream(have)
            log.info("updated schema registry bucket %s (replicas %d)", bucket, cfg.replicas)
            return "updated"
        return "up to date"
    except nats.js.errors.BadRequestError as e:
        raise ConfigError([f"nats.schema_registry: JetStream refused the bucket {bucket}: "
                           f"{e.description}"]) from e
    except (TimeoutError, nats.errors.Error, OSError) as e:
        raise PublishUnavailable(f"JetStream not available: {type(e).__name__}: {e}") from e


def entry_of(msg: OutboxMessage) -> tuple[str, dict[str, Any]] | None:
    """``(key, document)`` a schema-change row registers; ``None`` for any other row."""
    headers = msg.headers
    if not headers:
        return None
    key = headers.get(SCHEMA_ENTRY)
    if key is None:
        return None
    body = orjson.loads(msg.payload)
    return key, body["data"]["entry"]


class RegistryWriter:
    """Puts the versions named by schema-change rows into the bucket (one relay)."""

    def __init__(self, cfg: NatsConfig) -> None:
        self.bucket = cfg.schemas_bucket()
        self._kv: tuple[JetStreamContext, KeyValue] | None = None
        self.registered = 0

    def _kv_of(self, js: JetStreamContext) -> KeyValue:
        if self._kv is None or self._kv[0] is not js:  # a new connection
            self._kv = (js, KeyValue(name=self.bucket, stream=kv_stream(self.bucket),
                                     pre=f"$KV.{self.bucket}.", js=js, direct=False))
        return self._kv[1]

    async def register(self, js: JetStreamContext | None, msg: OutboxMessage) -> None:
        """Put the version ``msg`` introduces (no-op for any other row)."""
        found = entry_of(msg)
        if found is None:
            return
        if js is None:
            raise PublishUnavailable("not connected to NATS")
        key, entry = found
        value = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
        kv = self._kv_of(js)
        try:
            have = await _get(kv, key)
            if have is None or have != value:
                await kv.put(key, value)
            latest = await _get(kv, latest_key(key))
            if latest is None or int(orjson.loads(latest)["version"]) < int(entry["version"]):
                await kv.put(latest_key(key), value)
        except (TimeoutError, nats.errors.Error, OSError) as e:
            raise PublishUnavailable(f"schema registry {self.bucket}: {key} not stored: "
                                     f"{type(e).__name__}: {e}") from e
        self.registered += 1
        log.info("schema registry %s: %s registered", self.bucket, key)


async def _get(kv: KeyValue, key: str) -> bytes | None:
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.value
