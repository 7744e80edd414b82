"""The soak's ``type: mysql_binlog`` source: a MariaDB with a row binary log.

- ``soak_items``: a mutable table written by two writers on disjoint key ranges, their
  transactions interleaved (held open up to 50 ms); checked change by change
  (``exact``: the binlog carries every committed change, deletes included).
- ``soak_probe``: the probe table (append-only, ``exact``).

Its own server (``MariaDBServer(binlog=True)``), so ``restart:mariadb_binlog`` (a clean
stop or a kill -9, with the writers paused) rotates the binlog under the bridge, and the
proxy faults cut, refuse and delay the binlog connection and the snapshot's. The
adapter starts with ``snapshot: initial`` on empty tables and streams from there.
"""

from __future__ import annotations

import random
from typing import Any

from bench.soak.sources import PROBE_TABLE, Source, TableSpec, _hold, _probe_insert, _tx_size
from bench.soak.workload import KeySpace, merged_history
from bench.soak.writers import SqlTarget, WriterThread, keyspace_step


class BinlogSource(Source):
    def __init__(self, server: Any, proxy: Any, rng: random.Random, *, n_keys: int,
                 rate: float, adapter: str = "soakbinlog") -> None:
        super().__init__("mariadb_binlog", adapter, server, proxy)
        self.rng = rng
        half = max(1, n_keys // 2)
        self.spaces = [KeySpace(random.Random(rng.random()), half, first_key=1 + i * half)
                       for i in range(2)]
        self.targets = [SqlTarget("mariadb", self._connect) for _ in self.spaces]
        self.probe_target = SqlTarget("mariadb", self._connect)
        self.rate = rate
        self.tables = [TableSpec("mysql_binlog:soak_items", adapter, "soak_items", "exact",
                                 lambda: merged_history(*self.spaces),
                                 lambda: self.probe_target.final_state("soak_items")),
                       TableSpec("mysql_binlog:soak_probe", adapter, PROBE_TABLE, "exact",
                                 self.probes.history, self.probes.state)]

    def _connect(self) -> Any:
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.server.port, user="root",
                               database="test", connect_timeout=5, autocommit=False)

    def setup(self) -> None:
        self.probe_target.create_mutable("soak_items")
        self.probe_target.create_append(PROBE_TABLE)
        self.writers = [
            WriterThread(f"binlog-{i}", keyspace_step(
                target, "soak_items", space, _tx_size(random.Random(self.rng.random()), 3),
                _hold(random.Random(self.rng.random()), 0.05)), self.rate / 2)
            for i, (target, space) in enumerate(zip(self.targets, self.spaces, strict=True))]

    def adapter_configs(self) -> list[dict[str, Any]]:
        return [{"name": self.adapter, "type": "mysql_binlog",
                 "dsn": f"mysql://root@127.0.0.1:{self.proxy.port}",
                 "tables": ["test.soak_items", f"test.{PROBE_TABLE}"],
                 "snapshot": "initial", "heartbeat_interval": "1s", "connect_timeout": "5s",
                 "server_id": 4242}]

    def write_probe(self) -> int:
        ids = self.probes.propose(1)
        _probe_insert(self.probe_target, ids)
        self.probes.commit(ids)
        return len(self.probes.written)
