"""The library that services import: no daemon, no database driver unless asked for.

* :mod:`.consumer` — a durable JetStream consumer for downstream services (dedup by
  event id, back-off, dead letters), with seen-stores in :mod:`.seen`;
* :mod:`.outbox` — ``write_event`` for upstream services that own a PostgreSQL
  database (the table the ``outbox_table`` source relays);
* :mod:`.schemas` — the schema registry (every table version the bridge described),
  and :mod:`.upcasting` — upcasters that bring older events to a service's version
  (the consumer validates and upcasts in :mod:`.evolution`).

The names below are importable from here (``from cdc_bridge.client import Consumer``);
each loads its module only when first used, so a consumer never imports psycopg and a
producer never imports nats-py. Depends on :mod:`cdc_bridge.kernel` only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdc_bridge.client.consumer import Consumer, ConsumerSettings
    from cdc_bridge.client.events import Event, decode_event
    from cdc_bridge.client.outbox import create_outbox_table, write_event, write_event_async
    from cdc_bridge.client.schemas import SchemaEntry, SchemaNotFound, SchemaRegistry
    from cdc_bridge.client.seen import (
        MemorySeenStore,
        PostgresSeenStore,
        SeenStore,
        SqliteSeenStore,
    )
    from cdc_bridge.client.stats import ConsumerStats, prometheus_collector
    from cdc_bridge.client.upcasting import UpcastError, Upcasters

_WHERE = {
    "Consumer": "consumer", "ConsumerSettings": "consumer", "Event": "events",
    "decode_event": "events",
    "SchemaRegistry": "schemas", "SchemaEntry": "schemas", "SchemaNotFound": "schemas",
    "Upcasters": "upcasting", "UpcastError": "upcasting",
    "ConsumerStats": "stats", "prometheus_collector": "stats",
    "SeenStore": "seen", "MemorySeenStore": "seen", "SqliteSeenStore": "seen",
    "PostgresSeenStore": "seen",
    "write_event": "outbox", "write_event_async": "outbox", "create_outbox_table": "outbox",
}

__all__ = [
    "Consumer", "ConsumerSettings", "ConsumerStats", "Event", "MemorySeenStore",
    "PostgresSeenStore", "SchemaEntry", "SchemaNotFound", "SchemaRegistry", "SeenStore",
    "SqliteSeenStore", "UpcastError", "Upcasters", "create_outbox_table", "decode_event",
    "prometheus_collector", "write_event", "write_event_async",
]
assert sorted(__all__) == sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
