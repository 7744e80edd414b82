"""The schema registry, the reading side: every table version the bridge has described.

The relay puts each version's registry document into a JetStream key-value bucket
(``<STREAM>_SCHEMAS`` unless configured) under ``<adapter>.<schema>.<table>.v<N>``, and
moves ``<adapter>.<schema>.<table>.latest``, before it publishes any event of that
version (:mod:`cdc_bridge.relay.registry`). Every row event of a described table names
its version in ``dataschema`` (``nats-kv://<bucket>/<key>``) and
``data.source.schema_version``. :class:`SchemaRegistry` reads it::

    registry = SchemaRegistry(nc.jetstream())           # bucket CDC_SCHEMAS
    entry = await registry.get("shop", "public", "orders", 2)
    entry = await registry.for_event(cloudevent_dict)  # by its dataschema
    entry.json_schema, entry.shape().names()

Caching: a version never changes once written, so :meth:`SchemaRegistry.get` and
:meth:`SchemaRegistry.for_event` read each key once per registry (concurrent asks share
one read); :meth:`SchemaRegistry.latest` is kept ``latest_ttl_s`` (5 s), and is moved at
once by :meth:`SchemaRegistry.remember` (the consumer calls it with the entry of every
schema-change event it passes on). A key not found is not cached (it may be being put).

Errors: :class:`SchemaNotFound` (no such bucket or key); a failed read (timeout,
connection) raises the nats-py error, to be retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from cdc_bridge.kernel.schemas import TableShape, parse_schema_uri, registry_key, shape_of_entry

#: How long :meth:`SchemaRegistry.latest` trusts what it read.
LATEST_TTL_S = 5.0


class SchemaNotFound(LookupError):
    """The registry has no such bucket or version."""


@dataclass(frozen=True, slots=True)
class SchemaEntry:
    """One version of one table, as the registry document describes it."""

    adapter: str
    schema: str | None
    table: str
    version: int
    fingerprint: str
    key: tuple[str, ...]
    #: ``nats-kv://<bucket>/<key>``: the ``dataschema`` of this version's events.
    uri: str
    #: JSON Schema 2020-12 of a row image (``before``/``after``) of this version.
    json_schema: Mapping[str, Any]
    #: The whole registry document.
    document: Mapping[str, Any]

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> SchemaEntry:
        """The entry of a registry document; ``ValueError`` if it is not one."""
        try:
            return cls(str(document["adapter"]), document.get("schema"),
                       str(document["table"]), int(document["version"]),
                       str(document.get("fingerprint", "")),
                       tuple(str(k) for k in document.get("key") or ()),
                       str(document["uri"]), document.get("json_schema") or {}, document)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a schema registry entry: {type(e).__name__}: {e}") from None

    @property
    def registry_key(self) -> str:
        return registry_key(self.adapter, self.schema, self.table, self.version)

    @property
    def columns(self) -> list[Mapping[str, Any]]:
        return list(self.document.get("columns") or ())

    def shape(self) -> TableShape:
        """The table's look in this version (columns with their types, the key)."""
        return shape_of_entry(self.document)


class Bucket(Protocol):
    """What the registry reads from a bucket (a nats-py ``KeyValue`` in production)."""

    async def value(self, key: str) -> bytes | None: ...

    async def keys(self, pattern: str) -> list[str]: ...


BucketOpener = Callable[[str], Awaitable[Bucket]]


class _NatsBucket:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def value(self, key: str) -> bytes | None:
        try:
            entry = await self.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return entry.value

    async def keys(self, pattern: str) -> list[str]:
        watcher = await self.kv.watch(pattern, ignore_deletes=True, meta_only=True)
        found: list[str] = []
        try:
            async for entry in watcher:
                if entry is None:  # the end of what is stored now
                    break
                found.append(entry.key)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
        return found


def nats_opener(js: JetStreamContext) -> BucketOpener:
    """Open buckets over ``js`` (:class:`SchemaNotFound` for a bucket that does not exist)."""
    async def open_bucket(name: str) -> Bucket:
        try:
            return _NatsBucket(await js.key_value(name))
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.InvalidBucketNameError):
            raise SchemaNotFound(f"schema registry bucket {name} does not exist") from None
    return open_bucket


class SchemaRegistry:
    """Reads (and caches) table versions from the registry bucket; see the module docs."""

    def __init__(self, js: JetStreamContext | None = None, bucket: str | None = None, *,
                 stream: str = "CDC", latest_ttl_s: float = LATEST_TTL_S,
                 opener: BucketOpener | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if opener is None:
            if js is None:
                raise ValueError("SchemaRegistry needs a JetStream context (or an opener)")
            opener = nats_opener(js)
        self.bucket = bucket or f"{stream}_SCHEMAS"
        self.latest_ttl_s = latest_ttl_s
        self._open = opener
        self._clock = clock
        self._buckets: dict[str, Bucket] = {}
        #: ``(bucket, key) -> entry`` of versions: never stale.
        self._versions: dict[tuple[str, str], SchemaEntry] = {}
        #: ``(bucket, latest key) -> (entry, read at)``.
        self._latest: dict[tuple[str, str], tuple[SchemaEntry, float]] = {}
        self._reading: dict[tuple[str, str], asyncio.Future[SchemaEntry]] = {}
        #: Reads from the bucket (not answered from the cache).
        self.reads = 0

    # -- lookups -----------------------------------------------------------------------

    async def get(self, adapter: str, schema: str | None, table: str, version: int
                  ) -> SchemaEntry:
        """Version ``version`` of a table (:class:`SchemaNotFound` if not registered)."""
        return await self.entry(self.bucket, registry_key(adapter, schema, table, version))

    async def latest(self, adapter: str, schema: str | None, table: str) -> SchemaEntry:
        """The table's latest version (read again after ``latest_ttl_s``)."""
        slot = (self.bucket, registry_key(adapter, schema, table))
        cached = self._latest.get(slot)
        if cached is not None and self._clock() - cached[1] < self.latest_ttl_s:
            return cached[0]
        entry = await self._read(*slot)
        self._keep_latest(slot, entry)
        self._versions.setdefault((self.bucket, entry.registry_key), entry)
        return entry

    async def for_event(self, event: Mapping[str, Any]) -> SchemaEntry | None:
        """The version a CloudEvent (dict) names in ``dataschema``; ``None`` if it names
        none (the source does not describe the table)."""
        uri = event.get("dataschema")
        return await self.for_uri(uri) if isinstance(uri, str) else None

    async def for_uri(self, uri: str) -> SchemaEntry:
        """The version a ``dataschema`` URI names."""
        parsed = parse_schema_uri(uri)
        if parsed is None:
            raise SchemaNotFound(f"not a schema registry URI: {uri!r}")
        return await self.entry(*parsed)

    async def entry(self, bucket: str, key: str) -> SchemaEntry:
        """The version stored under ``key`` in ``bucket`` (cached for good)."""
        slot = (bucket, key)
        cached = self._versions.get(slot)
        if cached is not None:
            return cached
        entry = await self._read(bucket, key)
        self._versions[slot] = entry
        return entry

    async def versions(self, adapter: str, schema: str | None, table: str) -> list[int]:
        """The table's registered version numbers, ascending (read every time)."""
        base = registry_key(adapter, schema, table).rsplit(".", 1)[0]
        bucket = await self._bucket(self.bucket)
        found = []
        for key in await bucket.keys(f"{base}.*"):
            tail = key.rsplit(".", 1)[-1]
            if tail.startswith("v") and tail[1:].isdigit():
                found.append(int(tail[1:]))
        return sorted(found)

    # -- cache upkeep ------------------------------------------------------------------

    def remember(self, document: Mapping[str, Any]) -> SchemaEntry | None:
        """Cache the entry of a schema-change event (its ``data.entry``): its version,
        and the table's latest if newer. ``None`` if ``document`` is not an entry."""
        try:
            entry = SchemaEntry.of(document)
        except ValueError:
            return None
        parsed = parse_schema_uri(entry.uri)
        bucket = parsed[0] if parsed else self.bucket
        self._versions.setdefault((bucket, entry.registry_key), entry)
        slot = (bucket, registry_key(entry.adapter, entry.schema, entry.table))
        have = self._latest.get(slot)
        if have is None or have[0].version <= entry.version:
            self._keep_latest(slot, entry)
        return entry

    def adopt(self, other: SchemaRegistry) -> None:
        """Take over ``other``'s cached versions (they never change)."""
        for slot, entry in other._versions.items():
            self._versions.setdefault(slot, entry)

    def forget_latest(self, adapter: str, schema: str | None, table: str) -> None:
        """Read the table's latest again at the next :meth:`latest`."""
        self._latest.pop((self.bucket, registry_key(adapter, schema, table)), None)

    def cached(self) -> int:
        """Versions held in the cache."""
        return len(self._versions)

    # -- reading -----------------------------------------------------------------------

    def _keep_latest(self, slot: tuple[str, str], entry: SchemaEntry) -> None:
        self._latest[slot] = (entry, self._clock())

    async def _bucket(self, name: str) -> Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = await self._open(name)
        return bucket

    async def _read(self, bucket: str, key: str) -> SchemaEntry:
        """One read of ``key``, shared by everyone asking for it meanwhile."""
        slot = (bucket, key)
        running = self._reading.get(slot)
        if running is not None:
            await asyncio.wait([running])  # (its reader's cancellation is not ours)
            if not running.cancelled():
                return running.result()
        future: asyncio.Future[SchemaEntry] = asyncio.get_running_loop().create_future()
        self._reading[slot] = future
        try:
            entry = await self._fetch(bucket, key)
        except Exception as e:
            future.set_exception(e)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        except BaseException:
            future.cancel()
            raise
        else:
            future.set_result(entry)
            return entry
        finally:
            self._reading.pop(slot, None)

    async def _fetch(self, bucket: str, key: str) -> SchemaEntry:
        self.reads += 1
        raw = await (await self._bucket(bucket)).value(key)
        if raw is None:
            raise SchemaNotFound(f"schema registry {bucket} has no {key}")
        try:
            return SchemaEntry.of(orjson.loads(raw))
        except (orjson.JSONDecodeError, ValueError, AttributeError) as e:
            raise SchemaNotFound(f"schema registry {bucket}: {key} holds no entry ({e})"
                                 ) from None


#: nats-py errors a registry read may raise (transient: retry).
READ_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, OSError)
