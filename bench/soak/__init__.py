"""Fault-injection soak: evidence for the bridge's guarantees, reproducible with one command.

``python -m bench.soak --duration 600 --seed 7`` starts real servers (nats-server,
PostgreSQL with ``wal_level=logical``, MariaDB) on free ports, runs every available
source type at once against them with seeded writers, injects seeded faults (kill -9 of
the bridge, server restarts, connection cuts/refusals/delays through a TCP proxy, a full
outbox disk, a PostgreSQL table re-created or taken out of its publication, an old
state_dir restored), and finally reads the whole JetStream stream back to prove each change
arrived exactly once, in order per key, with the final state of every key equal to the
source. Modules:

- :mod:`~bench.soak.proxy`: the asyncio TCP proxy that cuts, refuses and delays;
- :mod:`~bench.soak.workload`: the pure, seeded model of what the writers did;
- :mod:`~bench.soak.writers`: threads applying it to the databases, pausable;
- :mod:`~bench.soak.sources`: per source type: tables, writers, probe, adapter config;
- :mod:`~bench.soak.faults`: fault kinds, seeded schedule, inject/heal actions;
- :mod:`~bench.soak.stream`, :mod:`~bench.soak.verify`: read the stream back, check it;
- :mod:`~bench.soak.driver`, :mod:`~bench.soak.table`: orchestration and result tables.
"""
