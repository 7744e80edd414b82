"""PostgreSQL logical replication adapter (``type: postgres``).

Modules, from the wire up:

* :mod:`adapters.postgres.pgoutput` — pure decoder of the replication stream: the
  COPY_BOTH wrapper (XLogData, keepalives, standby status updates) and every pgoutput
  message of protocol versions 1 and 2. Bytes in, frozen dataclasses out, no I/O.
* :mod:`adapters.postgres.values` — turns the text form of column values into JSON-able
  Python values using PostgreSQL's type catalogue (through psycopg's type registry and
  loaders); the conversion rules users see in event payloads are documented there.
"""
