"""Claim checks, the reading side: turn a reference back into the event it stands for.

An event too large for one NATS message reaches the stream as a small *reference*
(headers ``Cdc-Claim-Bucket``, ``Cdc-Claim-Object``, ``Cdc-Claim-Size``,
``Cdc-Claim-Digest``; the bridge's relay writes them, README "Large events") whose body
is the original event in a JetStream object store. :class:`ClaimResolver` fetches it and
checks its size and digest; :class:`cdc_bridge.client.consumer.Consumer` does that before
calling the handler, so handlers always get whole events.

Errors: :class:`ClaimGone` (the object is not in the bucket any more: expired, or
deleted by a person) and :class:`ClaimCorrupt` (what the bucket holds is not what the
reference describes) are permanent: the consumer dead-letters the message with the
reason. A fetch that fails otherwise (timeout, connection) is an ordinary failure and is
retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from cdc_bridge.kernel.wire import (
    CLAIM_BUCKET,
    CLAIM_DIGEST,
    CLAIM_OBJECT,
    CLAIM_SIZE,
    claim_digest,
)


class ClaimError(Exception):
    """A reference that cannot be resolved, and never will be."""


class ClaimGone(ClaimError):
    """The referenced object is not in its bucket (expired or deleted)."""


class ClaimCorrupt(ClaimError):
    """The object differs from what the reference says (size or digest)."""


@dataclass(frozen=True, slots=True)
class ClaimRef:
    """Where a reference's event is: bucket, object name, size in bytes, digest."""

    bucket: str
    name: str
    size: int
    digest: str

    @classmethod
    def of(cls, headers: Mapping[str, str] | None) -> ClaimRef | None:
        """The claim a message's headers describe; ``None`` for an ordinary message."""
        if not headers or CLAIM_OBJECT not in headers:
            return None
        try:
            return cls(headers[CLAIM_BUCKET], headers[CLAIM_OBJECT], int(headers[CLAIM_SIZE]),
                       headers[CLAIM_DIGEST])
        except (KeyError, ValueError) as e:
            raise ClaimCorrupt(f"incomplete claim-check headers: {e}") from None

    def __str__(self) -> str:
        return f"{self.bucket}/{self.name} ({self.size} bytes)"


def is_claim(headers: Mapping[str, str] | None) -> bool:
    """Whether a message is a claim-check reference."""
    return bool(headers) and CLAIM_OBJECT in (headers or {})


class ClaimResolver:
    """Fetches referenced events over one JetStream context (one per connection)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._stores: dict[str, ObjectStore] = {}

    async def _store(self, bucket: str) -> ObjectStore:
        store = self._stores.get(bucket)
        if store is None:
            try:
                store = await self.js.object_store(bucket)
            except nats.js.errors.BucketNotFoundError:
                raise ClaimGone(f"claim-check bucket {bucket} does not exist") from None
            self._stores[bucket] = store
        return store

    async def fetch(self, ref: ClaimRef) -> bytes:
        """The body ``ref`` stands for, checked; :class:`ClaimError` if it cannot be had."""
        store = await self._store(ref.bucket)
        try:
            result = await store.get(ref.name)
        except nats.js.errors.NotFoundError:  # (ObjectNotFoundError is one)
            raise ClaimGone(f"claim check {ref} is gone from its bucket (expired or "
                            "deleted)") from None
        except nats.js.errors.DigestMismatchError:
            raise ClaimCorrupt(f"claim check {ref}: the object's chunks do not match its "
                               "own digest") from None
        body = bytes(result.data or b"")
        if len(body) != ref.size or claim_digest(body) != ref.digest:
            raise ClaimCorrupt(f"claim check {ref}: the object holds {len(body)} bytes of "
                               "another digest")
        return body

    async def resolve(self, headers: Mapping[str, str] | None, body: bytes) -> bytes:
        """``body`` itself for an ordinary message, else the body its reference names."""
        ref = ClaimRef.of(headers)
        return body if ref is None else await self.fetch(ref)
