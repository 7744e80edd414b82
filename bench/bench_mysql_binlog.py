"""Benchmark: MariaDB row binlog -> bridge -> JetStream, against two ceilings.

Starts its own MariaDB with a row binary log (``tests/services``: ``MariaDBServer(binlog
=True)``) and nats-server, and in the same run:

1. ``bridge``: the bridge as a real process (``cdc-bridge run``, ``type: mysql_binlog``,
   SQLite outbox) streaming; one transaction inserts ``--rows`` small rows; events/s from
   its commit to the last PubAck (the stream's message count reaching ``--rows``).
2. ``library``: mysql-replication alone reading the same binlog range (every row decoded,
   nothing else): the source ceiling.
3. ``nats``: a bare nats-py ``publish_async`` loop of as many messages of the bridge's
   size with ``Nats-Msg-Id`` headers, awaiting every PubAck: the sink ceiling. The ratio
   printed is bridge / the lower ceiling.

    .venv/bin/python bench/bench_mysql_binlog.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.row_event import WriteRowsEvent

from bench.common import (
    bridge,
    bridge_config,
    emit,
    publish_ceiling,
    services,
    wait_log,
    wait_stored,
)
from cdc_bridge.kernel.events import ChangeEvent
from tests.harnesses.mysql_binlog import run_sql
from tests.services.mariadb import MariaDBServer


def library_read(server: MariaDBServer, start: tuple[str, int], n: int) -> float:
    """Seconds mysql-replication alone takes to decode ``n`` rows from ``start``."""
    t0 = time.time()
    stream = BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": server.port, "user": "root",
                             "password": ""},
        server_id=777, resume_stream=True, blocking=True, log_file=start[0],
        log_pos=start[1], only_events=[WriteRowsEvent], enable_logging=False)
    seen = 0
    try:
        for event in stream:
            seen += len(event.rows)
            if seen >= n:
                break
    finally:
        stream.close()
    return time.time() - t0


def bench(args: argparse.Namespace) -> None:
    maria = MariaDBServer(binlog=True)
    maria.start()
    try:
        with services("bench-binlog-") as env:
            url = env.nats.url
            run_sql(maria, "CREATE DATABASE shop",
                    "CREATE TABLE shop.ev (id bigint PRIMARY KEY, customer varchar(20), "
                    "amount decimal(12,2), note varchar(20))")
            adapter = {"name": "shop", "type": "mysql_binlog", "snapshot": "never",
                       "dsn": f"mysql://root@127.0.0.1:{maria.port}", "tables": ["shop.ev"]}
            cfg = bridge_config(env.workdir, url, [adapter],
                                nats_extra={"duplicate_window": "2m"}, log_level="INFO")
            n = args.rows
            with bridge(env.workdir, cfg) as proc:
                assert wait_log(proc, "streaming the binlog", 60), proc.log()[-2000:]
                time.sleep(1.0)
                file, pos = run_sql(maria, "SHOW MASTER STATUS")[0][:2]
                t0 = time.time()
                run_sql(maria, "INSERT INTO shop.ev SELECT seq, concat('cust-', seq % 97), "
                        f"seq + 0.25, 'note' FROM seq_1_to_{n}", database="shop")
                t_commit = time.time()
                t_done = wait_stored(url, n, timeout_s=600, interval_s=0.02).done_at
                bridge_rate = n / (t_done - t_commit)
                print(f"bridge commit->PubAck: {n} rows in {t_done - t_commit:.2f}s = "
                      f"{bridge_rate:,.0f} events/s (insert took {t_commit - t0:.2f}s)",
                      flush=True)
                assert proc.terminate() == 0, proc.log()[-2000:]
            lib_s = library_read(maria, (str(file), int(pos)), n)
            lib_rate = n / lib_s
            print(f"mysql-replication alone, same range: {lib_s:.2f}s = {lib_rate:,.0f} rows/s",
                  flush=True)
            events = [ChangeEvent(adapter="shop", schema="shop", table="ev", op="c",
                                  position=f"binlog.000001:{i}", key={"id": i},
                                  after={"id": i, "customer": f"cust-{i % 97}",
                                         "amount": f"{i}.25", "note": "note"},
                                  txid="0-1-5", ts_ms=1_795_000_000_000,
                                  source_extra={"file": "binlog.000001", "pos": 4,
                                                "gtid": "0-1-5", "snapshot": False})
                      for i in range(n)]
            nats_rate = asyncio.run(publish_ceiling(
                url, [e.encode() for e in events], msg_ids=[e.id for e in events],
                subject="bare.shop.shop.ev.c", stream="BARE"))
            del events
            print(f"bare nats-py publish_async: {nats_rate:,.0f} msg/s", flush=True)
            ceiling = min(lib_rate, nats_rate)
            lower = "mysql-replication" if lib_rate < nats_rate else "nats"
            ratio = bridge_rate / ceiling
            print(f"ratio bridge / lower ceiling ({lower}): {ratio:.2f}; bridge / "
                  f"mysql-replication {bridge_rate / lib_rate:.2f}; bridge / nats "
                  f"{bridge_rate / nats_rate:.2f}", flush=True)
            emit("mysql_binlog e2e events/s (one tx)", round(bridge_rate), "events/s",
                 ceiling=round(ceiling), ratio=round(ratio, 3))
            emit("mysql_binlog library-only rows/s", round(lib_rate), "rows/s")
    finally:
        maria.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    bench(parser.parse_args())


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
