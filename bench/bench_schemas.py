"""Benchmark: what describing every event's schema costs on the hot path (docs/schemas.md).

Two measurements, each comparing the registry off and on IN THE SAME RUN:

1. ``encode``: the capture path's encoding (``encode_batch``) of ``--events`` update
   events of one table, without a schema and with one (the writer's identity lookup of
   the shape, the ``dataschema`` attribute and ``schema_version``), alternating rounds
   so that both see the same machine; the best round of each, in microseconds per event.
2. ``e2e`` (unless ``--no-e2e``): PostgreSQL logical replication -> bridge -> JetStream,
   one ``--rows``-row transaction, with ``nats.schema_registry.enabled`` false then
   true (a fresh bridge, slot and stream each), each divided by the bare nats-py
   ``publish_async`` ceiling measured on a quiet server before the first bridge and
   after the last (the better of the two: a depressed ceiling would flatter the ratio).
   ``--repeat`` runs each variant that many times, alternating, and keeps each one's
   best.

    .venv/bin/python bench/bench_schemas.py [--rows 100000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_postgres import (
    TABLE_DDL,
    bridge_sized_events,
    insert_tx,
    quiet_ceiling,
    settle,
    sql,
)
from bench.common import (
    bridge,
    bridge_config,
    emit,
    services,
    stream_count,
    wait_log,
    wait_stored,
)
from cdc_bridge.kernel.batch import ChangeBatch
from cdc_bridge.kernel.events import ChangeEvent
from cdc_bridge.kernel.schema_policy import SchemaPolicy
from cdc_bridge.kernel.schemas import ColumnShape, TableShape
from cdc_bridge.outbox.schema_tracker import SchemaTracker
from cdc_bridge.outbox.writer import encode_batch


def _events(n: int, shape: TableShape | None) -> list[ChangeEvent]:
    return [ChangeEvent("shop", "orders", "u", f"0/{i:X}", schema="public", key={"id": i},
                        before={"id": i, "customer": f"c{i % 97}", "amount": "10.00"},
                        after={"id": i, "customer": f"c{i % 97}", "amount": "11.00"},
                        ts_ms=1_795_000_000_000, source_extra={"lsn": f"0/{i:X}"},
                        shape=shape) for i in range(n)]


def encode(n: int, rounds: int) -> None:
    shape = TableShape.of([ColumnShape("id", "int8", "integer", False),
                           ColumnShape("customer", "text", "string", True),
                           ColumnShape("amount", "numeric", "string", True)], ["id"])
    plain = ChangeBatch(_events(n, None), None)
    described = ChangeBatch(_events(n, shape), None)
    tracker = SchemaTracker("shop", "cdc", "CDC_SCHEMAS", SchemaPolicy(), [])
    encode_batch(described, "cdc", tracker=tracker)  # version 1, once
    tracker.committed()
    runs: dict[str, Callable[[], object]] = {
        "off": lambda: encode_batch(plain, "cdc"),
        "on": lambda: encode_batch(described, "cdc", tracker=tracker),
    }
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    off, on = (best[k] / n * 1e6 for k in ("off", "on"))
    print(f"encode_batch: registry off {off:.2f} us/event, on {on:.2f} us/event; "
          f"on/off {on / off:.3f}", flush=True)
    emit("encode_batch us/event, schema registry off", round(off, 2), "us/event")
    emit("encode_batch us/event, schema registry on", round(on, 2), "us/event",
         ratio=round(on / off, 3))


def e2e(rows: int, repeat: int) -> None:
    with services("bench-schemas-", postgres=True) as env:
        assert env.postgres is not None
        url, dsn = env.nats.url, env.postgres.dsn
        sql(dsn, TABLE_DDL, "CREATE PUBLICATION bench_pub FOR TABLE ev")
        sample = bridge_sized_events(rows)
        bodies, ids = [e.encode() for e in sample], [e.id for e in sample]
        del sample
        before = quiet_ceiling(url, bodies, ids, "before")
        print(f"bare publish_async before: {before:,.0f} msg/s", flush=True)
        rates: dict[str, float] = {"off": 0.0, "on": 0.0}
        start = 1
        for i in range(repeat):
            for variant in ("off", "on"):
                workdir = env.workdir / f"{variant}{i}"
                workdir.mkdir()
                adapter = {"name": f"s{variant}{i}", "type": "postgres", "dsn": dsn,
                           "tables": ["ev"], "snapshot": "never",
                           "publication": "bench_pub", "slot": f"bench_{variant}{i}"}
                stream = f"CDC_{variant.upper()}{i}"
                cfg = bridge_config(workdir, url, [adapter], nats_extra={
                    "duplicate_window": "2m", "stream": stream,
                    "subject_prefix": f"c{variant}{i}",
                    "schema_registry": {"enabled": variant == "on"}}, log_level="WARNING")
                with bridge(workdir, cfg) as proc:
                    wait_log(proc, "created replication slot", 30)
                    settle(1.0)
                    t_commit = insert_tx(dsn, start, rows)
                    start += rows
                    done = wait_stored(url, rows, timeout_s=600, interval_s=0.02,
                                       stream=stream).done_at  # rows: no schema events
                    rate = rows / (done - t_commit)
                    rates[variant] = max(rates[variant], rate)
                    print(f"round {i + 1}, registry {variant}: {rate:,.0f} events/s "
                          f"({stream_count(url, stream)} stored)", flush=True)
                    assert proc.terminate() == 0, proc.log()[-2000:]
                sql(dsn, f"SELECT pg_drop_replication_slot('bench_{variant}{i}')")
        after = quiet_ceiling(url, bodies, ids, "after")
        ceiling = max(before, after)
        print(f"bare publish_async after: {after:,.0f} msg/s; ceiling {ceiling:,.0f}",
              flush=True)
        for variant in ("off", "on"):
            emit(f"postgres e2e events/s (one tx), schema registry {variant}",
                 round(rates[variant]), "events/s", ceiling=round(ceiling),
                 ratio=round(rates[variant] / ceiling, 3))
        print(f"ratio to the ceiling: registry off {rates['off'] / ceiling:.3f}, on "
              f"{rates['on'] / ceiling:.3f}; on/off {rates['on'] / rates['off']:.3f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-e2e", action="store_true")
    args = parser.parse_args()
    encode(args.events, args.rounds)
    if not args.no_e2e:
        e2e(args.rows, args.repeat)


if __name__ == "__main__":
    main()
