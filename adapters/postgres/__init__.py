"""PostgreSQL logical replication adapter (``type: postgres``).

Modules, from the wire up:

* :mod:`cdc_bridge.adapters.postgres.pgoutput` — pure decoder of the replication stream: the
  COPY_BOTH wrapper (XLogData, keepalives, standby status updates) and every pgoutput
  message of protocol versions 1 and 2. Bytes in, frozen dataclasses out, no I/O.
* :mod:`cdc_bridge.adapters.postgres.values` — turns the text form of column values into JSON-able
  Python values using PostgreSQL's type catalogue (through psycopg's type registry and
  loaders); the conversion rules users see in event payloads are documented there.
* :mod:`cdc_bridge.adapters.postgres.config` — the strict config model (``type: postgres``).
* :mod:`cdc_bridge.adapters.postgres.setup` — checks (wal_level, REPLICATION, SELECT, replica
  identity) with the exact fix in each error; table resolution; publication; slot state.
* :mod:`cdc_bridge.adapters.postgres.replication` — the replication connection on psycopg's ``pq``
  layer, driven from asyncio (``add_reader`` on the socket).
* :mod:`cdc_bridge.adapters.postgres.position` — the checkpoint, and the visibility filter that
  makes a resumed snapshot exact (the guarantee is stated there). Pure.
* :mod:`cdc_bridge.adapters.postgres.changes` — messages and snapshot rows to events (keys, before
  images, TOAST placeholder, column rules). Pure.
* :mod:`cdc_bridge.adapters.postgres.outbox` — rows of ``outbox_tables`` to routed messages (the
  same as ``type: outbox_table`` publishes). Pure.
* :mod:`cdc_bridge.adapters.postgres.stream` — the streaming loop: batches (also inside one large
  transaction), acknowledgements to slot flushes, keepalives.
* :mod:`cdc_bridge.adapters.postgres.snapshot` — the chunked, resumable ``op: r`` copy.
* :mod:`cdc_bridge.adapters.postgres.heartbeat` — idle heartbeats so the slot keeps moving.
* :mod:`cdc_bridge.adapters.postgres.adapter` — the Adapter: decides snapshot/stream, wires it all.
"""

from __future__ import annotations

from cdc_bridge.adapters.contract import Adapter, AdapterConfig, AdapterContext, AdapterType
from cdc_bridge.adapters.postgres.config import PostgresConfig


def _factory(config: AdapterConfig, context: AdapterContext) -> Adapter:
    from cdc_bridge.adapters.postgres.adapter import PostgresAdapter

    assert isinstance(config, PostgresConfig)
    return PostgresAdapter(config, context)


ADAPTER_TYPE = AdapterType("postgres", PostgresConfig, _factory)
