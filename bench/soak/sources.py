"""The soak's sources: for each adapter type, its tables, writers, probe and bridge config.

A :class:`Source` owns one adapter block of the bridge config, the tables it writes to
(each a :class:`TableSpec` that the verifier checks) and a *probe*: an append-only
table (``soak_probe``) written by the driver after every fault. A probe row reaching
the stream proves that the whole path (source -> bridge -> outbox -> JetStream) works
again; the time that takes is the fault's recovery time.

- :class:`PostgresSource` (``type: postgres``, pgoutput): ``public.soak_items``, a
  mutable table written by two interleaving writers and checked change by change
  (``exact``: log-based capture sees every one). It is also the target of the table
  faults: :meth:`PostgresSource.recreate` (the legacy nightly reload) and
  :meth:`PostgresSource.unpublish`, each recorded as a
  :class:`~bench.soak.verify.ResetWindow` for the verifier.
- :class:`MariaSource` (``type: sql_poll`` on MariaDB): ``soak_ledger`` (append-only,
  ``incrementing`` mode, ``exact``), ``soak_items`` (``diff`` mode) and ``soak_ts``
  (``timestamp+incrementing``, commits out of timestamp order), the last two checked by
  ``state``: a poller only sees the states that exist at poll time, but must never
  reorder, duplicate or miss the final state (deletes included, in ``diff`` mode).

The bridge reaches each database through a :class:`~bench.soak.proxy.FaultProxy`;
writers and reads go straight to the server.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bench.soak.verify import ResetWindow
from bench.soak.workload import AppendLog, Change, KeySpace, merged_history
from bench.soak.writers import SqlTarget, WriterThread, append_step, keyspace_step

PROBE_TABLE = "soak_probe"


@dataclass(slots=True)
class TableSpec:
    """One table the verifier checks: where its events are and what was written."""

    label: str
    adapter: str
    table: str  # ``data.source.table`` of its events
    mode: str  # "exact" | "state"
    history: Callable[[], dict[int, list[Change]]]
    final: Callable[[], dict[int, int]]
    #: The table resets the soak made (``t`` events expected), in order.
    resets: Callable[[], list[ResetWindow]] | None = None


@dataclass(slots=True)
class Source:
    """Base: everything the driver needs from one source type."""

    kind: str
    adapter: str
    server: Any = None  # what "restart <kind>" acts on (None: no server)
    proxy: Any = None
    writers: list[WriterThread] = field(default_factory=list)
    tables: list[TableSpec] = field(default_factory=list)
    probes: AppendLog = field(default_factory=AppendLog)
    #: A restored state_dir neither loses nor repeats anything of this source (as long
    #: as the relay had drained when the backup was made obsolete): its capture position
    #: lives in the source (a replication slot), not only in the checkpoint. A source
    #: that re-reads from a restored, older checkpoint re-emits what it read since.
    restore_safe: ClassVar[bool] = False

    def setup(self) -> None:
        raise NotImplementedError

    def adapter_configs(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def write_probe(self) -> int:
        """Append the next probe row; returns how many probes exist now."""
        raise NotImplementedError

    def probe_subject(self, prefix: str) -> str:
        """Where this source's probe rows land (wildcards allowed)."""
        return f"{prefix}.{self.adapter}.*.{PROBE_TABLE}.>"

    def close(self) -> None:
        return None


def _tx_size(rng: random.Random, mean: int) -> Callable[[], int]:
    return lambda: max(1, int(rng.expovariate(1.0 / mean)))


def _hold(rng: random.Random, max_s: float) -> Callable[[], float]:
    return lambda: rng.uniform(0.0, max_s)


class PostgresSource(Source):
    """Two writers on disjoint key ranges of one table, transactions interleaved.

    The publication is named (:data:`PUBLICATION`) so that ``alter:publication`` can
    take ``soak_items`` out of it; ``table_check_interval`` is short so the bridge
    notices a table fault within a second or two.
    """

    PUBLICATION: ClassVar[str] = "cdc_soak_pub"
    restore_safe: ClassVar[bool] = True

    def __init__(self, server: Any, proxy: Any, rng: random.Random, *, n_keys: int,
                 rate: float, adapter: str = "soakpg") -> None:
        super().__init__("postgres", adapter, server, proxy)
        self.rng = rng
        half = max(1, n_keys // 2)
        self.spaces = [KeySpace(random.Random(rng.random()), half, first_key=1 + i * half)
                       for i in range(2)]
        self.targets = [SqlTarget("postgres", self._connect) for _ in self.spaces]
        self.probe_target = SqlTarget("postgres", self._connect)
        self.rate = rate
        self.resets: list[ResetWindow] = []
        self.ddl_target = SqlTarget("postgres", self._connect)
        self.tables = [TableSpec("postgres:soak_items", adapter, "soak_items", "exact",
                                 lambda: merged_history(*self.spaces),
                                 lambda: self.probe_target.final_state("soak_items"),
                                 lambda: list(self.resets)),
                       TableSpec("postgres:soak_probe", adapter, PROBE_TABLE, "exact",
                                 self.probes.history, self.probes.state)]

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.server.dsn, connect_timeout=5)

    def setup(self) -> None:
        self.probe_target.create_mutable("soak_items")
        self.probe_target.create_append(PROBE_TABLE)
        self.writers = [
            WriterThread(f"postgres-{i}", keyspace_step(
                target, "soak_items", space, _tx_size(random.Random(self.rng.random()), 3),
                _hold(random.Random(self.rng.random()), 0.05)), self.rate / 2)
            for i, (target, space) in enumerate(zip(self.targets, self.spaces, strict=True))]

    def adapter_configs(self) -> list[dict[str, Any]]:
        dsn = f"postgresql://postgres@127.0.0.1:{self.proxy.port}/postgres"
        return [{"name": self.adapter, "type": "postgres", "dsn": dsn,
                 "tables": ["public.soak_items", f"public.{PROBE_TABLE}"],
                 "snapshot": "initial", "heartbeat_interval": "2s",
                 "status_interval": "2s", "connect_timeout": "5s",
                 "publication": self.PUBLICATION, "on_table_change": "resnapshot",
                 "table_check_interval": "1s"}]

    def write_probe(self) -> int:
        ids = self.probes.propose(1)
        _probe_insert(self.probe_target, ids)
        self.probes.commit(ids)
        return len(self.probes.written)

    def lengths(self) -> dict[int, int]:
        """How many changes of each ``soak_items`` key the writers have committed."""
        out: dict[int, int] = {}
        for space in self.spaces:
            with space.lock:
                out.update((k, len(h)) for k, h in space.history.items())
        return out

    def _ddl_conn(self) -> Any:
        """The DDL connection, opened again if the server restarted since its last use
        (so the DDL itself runs once, on a connection known to work)."""
        try:
            self.ddl_target.execute("SELECT 1")
        except Exception:
            self.ddl_target.drop()
        return self.ddl_target.conn()

    def recreate(self) -> None:
        """The legacy nightly reload, while the writers go on: in one transaction a copy
        of the table's current rows becomes the table (a new OID, in no publication).

        The table is locked first, so no concurrent commit falls between the copy and
        the ``DROP``; a writer waiting on the lock then writes to the new table.
        """
        new = "soak_items_reload"
        conn = self._ddl_conn()
        try:
            with conn.transaction():
                conn.execute("LOCK TABLE soak_items IN ACCESS EXCLUSIVE MODE")
                conn.execute(f"CREATE TABLE {new} (LIKE soak_items INCLUDING ALL)")
                conn.execute(f"INSERT INTO {new} SELECT * FROM soak_items")
                conn.execute(f"ALTER TABLE {new} REPLICA IDENTITY FULL")
                conn.execute("DROP TABLE soak_items")
                conn.execute(f"ALTER TABLE {new} RENAME TO soak_items")
        except Exception:
            self.ddl_target.drop()
            raise

    def unpublish(self) -> None:
        """``ALTER PUBLICATION ... DROP TABLE soak_items`` while the writers go on."""
        self._ddl_conn()
        self.ddl_target.execute(f"ALTER PUBLICATION {self.PUBLICATION} DROP TABLE soak_items")


class MariaSource(Source):
    """``diff``, ``incrementing`` and ``timestamp+incrementing`` tables on MariaDB.

    ``soak_ts`` has two writers on disjoint key ranges whose transactions stay open up
    to 300 ms before COMMIT, so rows become visible out of their ``updated_at`` order:
    the case where a naive timestamp poller skips rows forever (``lag_window`` must
    catch them). That mode cannot see deletes, so its writers only insert and update.
    """

    def __init__(self, server: Any, proxy: Any, rng: random.Random, *, n_keys: int,
                 rate: float, poll_interval: str = "200ms", adapter: str = "soakmaria") -> None:
        super().__init__("mariadb", adapter, server, proxy)
        self.rng = rng
        self.items = KeySpace(random.Random(rng.random()), n_keys)
        half = max(1, n_keys // 2)
        self.ts_spaces = [KeySpace(random.Random(rng.random()), half, delete_ratio=0.0,
                                   first_key=1 + i * half) for i in range(2)]
        self.ledger = AppendLog()
        self.target = SqlTarget("mariadb", self._connect)
        self.ts_targets = [SqlTarget("mariadb", self._connect) for _ in self.ts_spaces]
        self.ledger_target = SqlTarget("mariadb", self._connect)
        self.probe_target = SqlTarget("mariadb", self._connect)
        self.rate = rate
        self.poll_interval = poll_interval
        self.tables = [
            TableSpec("sql_poll:soak_items(diff)", adapter, "soak_items", "state",
                      lambda: self.items.history, lambda: self.target.final_state("soak_items")),
            TableSpec("sql_poll:soak_ts(ts+incr)", adapter, "soak_ts", "state",
                      lambda: merged_history(*self.ts_spaces),
                      lambda: self.probe_target.final_state("soak_ts")),
            TableSpec("sql_poll:soak_ledger(incr)", adapter, "soak_ledger", "exact",
                      self.ledger.history, self.ledger.state),
            TableSpec("sql_poll:soak_probe(incr)", adapter, PROBE_TABLE, "exact",
                      self.probes.history, self.probes.state),
        ]

    def _connect(self) -> Any:
        import pymysql

        return pymysql.connect(host="127.0.0.1", port=self.server.port, user="root",
                               database="test", connect_timeout=5, autocommit=False)

    def setup(self) -> None:
        self.target.create_mutable("soak_items")
        self.target.create_mutable("soak_ts")
        self.ledger_target.create_append("soak_ledger")
        self.ledger_target.create_append(PROBE_TABLE)
        rng = self.rng
        items = keyspace_step(self.target, "soak_items", self.items, _tx_size(rng, 3))
        ledger = append_step(self.ledger_target, "soak_ledger", self.ledger,
                             _tx_size(random.Random(rng.random()), 4))
        self.writers = [WriterThread("mariadb-items", items, self.rate),
                        WriterThread("mariadb-ledger", ledger, self.rate / 2)]
        for i, (target, space) in enumerate(zip(self.ts_targets, self.ts_spaces, strict=True)):
            step = keyspace_step(target, "soak_ts", space, _tx_size(random.Random(rng.random()),
                                                                      2),
                                 _hold(random.Random(rng.random()), 0.3))
            self.writers.append(WriterThread(f"mariadb-ts-{i}", step, self.rate / 4))

    def adapter_configs(self) -> list[dict[str, Any]]:
        url = f"mysql+pymysql://root@127.0.0.1:{self.proxy.port}/test"
        return [{"name": self.adapter, "type": "sql_poll", "url": url,
                 "poll_interval": self.poll_interval,
                 "tables": [
                     {"name": "soak_items", "mode": "diff"},
                     {"name": "soak_ts", "mode": "timestamp+incrementing",
                      "timestamp_column": "updated_at", "incrementing_column": "id"},
                     {"name": "soak_ledger", "mode": "incrementing",
                      "incrementing_column": "id"},
                     {"name": PROBE_TABLE, "mode": "incrementing",
                      "incrementing_column": "id"},
                 ]}]

    def write_probe(self) -> int:
        ids = self.probes.propose(1)
        _probe_insert(self.probe_target, ids)
        self.probes.commit(ids)
        return len(self.probes.written)


def _probe_insert(target: SqlTarget, ids: list[int]) -> None:
    """Insert probe rows, retrying while the server restarts; exactly once."""
    import time

    deadline = time.monotonic() + 120
    while True:
        try:
            target.insert_ids(PROBE_TABLE, ids)
            return
        except Exception:
            target.drop()
            try:
                if target.execute(f"SELECT 1 FROM {PROBE_TABLE} WHERE id = %s", (ids[0],)):
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
