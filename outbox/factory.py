"""Open the outbox store named by a URL (``sqlite:///path`` or ``postgresql://...``)."""

from __future__ import annotations

from cdc_bridge.outbox.base import OutboxStore
from cdc_bridge.outbox.sqlite import SqliteStore


def open_store(url: str) -> OutboxStore:
    if url.startswith("sqlite:///"):
        return SqliteStore(url[len("sqlite:///"):])
    if url.startswith(("postgresql://", "postgres://")):
        from cdc_bridge.outbox.postgres import PostgresStore

        return PostgresStore(url)
    scheme = url.split(":", 1)[0]
    raise ValueError(f"unsupported outbox URL scheme {scheme!r}: use sqlite:/// or postgresql://")
