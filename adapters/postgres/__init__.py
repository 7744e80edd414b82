"""PostgreSQL logical replication adapter (``type: postgres``).

Modules, from the wire up:

* :mod:`adapters.postgres.pgoutput` — pure decoder of the replication stream: the
  COPY_BOTH wrapper (XLogData, keepalives, standby status updates) and every pgoutput
  message of protocol versions 1 and 2. Bytes in, frozen dataclasses out, no I/O.
* :mod:`adapters.postgres.values` — turns the text form of column values into JSON-able
  Python values using PostgreSQL's type catalogue (through psycopg's type registry and
  loaders); the conversion rules users see in event payloads are documented there.
* :mod:`adapters.postgres.config` — the strict config model (``type: postgres``).
* :mod:`adapters.postgres.setup` — checks (wal_level, REPLICATION, SELECT, replica
  identity) with the exact fix in each error; table resolution; publication; slot state.
* :mod:`adapters.postgres.replication` — the replication connection on psycopg's ``pq``
  layer, driven from asyncio (``add_reader`` on the socket).
* :mod:`adapters.postgres.position` — the checkpoint, and the visibility filter that
  makes a resumed snapshot exact (the guarantee is stated there). Pure.
* :mod:`adapters.postgres.changes` — messages and snapshot rows to events (keys, before
  images, TOAST placeholder, column rules). Pure.
* :mod:`adapters.postgres.outbox` — rows of ``outbox_tables`` to routed messages (the
  same as ``type: outbox_table`` publishes). Pure.
* :mod:`adapters.postgres.stream` — the streaming loop: batches (also inside one large
  transaction), acknowledgements to slot flushes, keepalives.
* :mod:`adapters.postgres.snapshot` — the chunked, resumable ``op: r`` copy.
* :mod:`adapters.postgres.heartbeat` — idle heartbeats so the slot keeps moving.
* :mod:`adapters.postgres.adapter` — the Adapter: decides snapshot/stream, wires it all.
"""
