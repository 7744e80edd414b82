"""Writer threads that apply the seeded workload to a real database, and survive its faults.

:class:`WriterThread` runs one ``step`` function in a loop at a target rate. A step
proposes a transaction from the model (:mod:`bench.soak.workload`), runs it, and
records it in the model only after COMMIT returned. The soak pauses a writer around a
restart of its own server (:meth:`WriterThread.pause` waits for the transaction in
flight), so a commit is never cut in the middle; if a connection still breaks inside a
commit, the step reads the first changed row back to learn whether the transaction
landed (``resolve``), so the model always equals the source.

:class:`SqlTarget` holds the SQL of the ``(id, v, payload, updated_at)`` tables for one
dialect (``postgres`` via psycopg, ``mariadb`` via PyMySQL) and a reconnecting
connection; it is the only place that talks to the databases here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.soak.workload import AppendLog, Change, KeySpace

log = logging.getLogger("soak.writer")


class WriterThread:
    """Call ``step()`` about ``rate`` times a second until stopped; pausable."""

    def __init__(self, name: str, step: Callable[[], None], rate: float) -> None:
        self.name = name
        self.step = step
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.errors = 0
        self.steps = 0
        self._run = threading.Event()
        self._run.set()
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"writer-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def pause(self) -> None:
        """Stop after the transaction in flight; returns once it is done."""
        self._run.clear()
        with self._busy:
            pass

    def resume(self) -> None:
        self._run.set()

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._run.wait()
            if self._stop.is_set():
                return
            with self._busy:
                if not self._run.is_set():
                    continue
                try:
                    self.step()
                    self.steps += 1
                except Exception as e:  # the server may be restarting: back off, retry
                    self.errors += 1
                    log.debug("%s: write failed (%s); retrying", self.name, e)
                    time.sleep(0.5)
            next_at = max(next_at + self.interval, time.monotonic() - 1.0)
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)


class SqlTarget:
    """Tables ``(id, v, payload, updated_at)`` in PostgreSQL or MariaDB."""

    def __init__(self, dialect: str, connect: Callable[[], Any]) -> None:
        assert dialect in ("postgres", "mariadb")
        self.dialect = dialect
        self._connect = connect
        self._conn: Any = None

    def conn(self) -> Any:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement in its own transaction (set-up, probes, reads)."""
        try:
            conn = self.conn()
            cur = conn.cursor()
            cur.execute(sql, params)
            rows = list(cur.fetchall()) if cur.description else []
            conn.commit()
            return rows
        except Exception:
            self.drop()
            raise

    def create_mutable(self, table: str) -> None:
        if self.dialect == "postgres":
            self.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL, "
                         "payload text, updated_at timestamptz(6) NOT NULL DEFAULT now())")
            self.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
        else:
            self.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL, "
                         "payload varchar(200), updated_at datetime(6) NOT NULL, "
                         "KEY (updated_at, id)) CHARACTER SET utf8mb4")

    def create_append(self, table: str) -> None:
        ts = "timestamptz(6) DEFAULT now()" if self.dialect == "postgres" else "datetime(6)"
        self.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL, at {ts})")

    def _now(self) -> str:
        return "now()" if self.dialect == "postgres" else "NOW(6)"

    def apply_changes(self, table: str, changes: list[Change], hold_s: float = 0.0) -> None:
        """One transaction; ``hold_s`` keeps it open before COMMIT (so that transactions
        of concurrent writers commit out of the order of their statements)."""
        conn = self.conn()
        cur = conn.cursor()
        for ch in changes:
            if ch.op == "c":
                cur.execute(f"INSERT INTO {table} (id, v, payload, updated_at) "
                            f"VALUES (%s, %s, %s, {self._now()})", (ch.key, ch.v, ch.payload))
            elif ch.op == "u":
                cur.execute(f"UPDATE {table} SET v = %s, payload = %s, updated_at = "
                            f"{self._now()} WHERE id = %s", (ch.v, ch.payload, ch.key))
            else:
                cur.execute(f"DELETE FROM {table} WHERE id = %s", (ch.key,))
        if hold_s > 0:
            time.sleep(hold_s)
        conn.commit()

    def landed(self, table: str, changes: list[Change]) -> bool:
        """After an unclear COMMIT: did ``changes`` (one transaction) land?"""
        first = changes[0]
        rows = self.execute(f"SELECT v FROM {table} WHERE id = %s", (first.key,))
        if first.op == "d":
            return not rows
        return bool(rows) and int(rows[0][0]) == first.v

    def insert_ids(self, table: str, ids: list[int]) -> None:
        conn = self.conn()
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {table} (id, v, at) VALUES (%s, 1, {self._now()})",
                        [(i,) for i in ids])
        conn.commit()

    def final_state(self, table: str) -> dict[int, int]:
        return {int(i): int(v) for i, v in self.execute(f"SELECT id, v FROM {table}")}


def keyspace_step(target: SqlTarget, table: str, space: KeySpace,
                  tx_size: Callable[[], int],
                  hold: Callable[[], float] = lambda: 0.0) -> Callable[[], None]:
    """A writer step: one transaction of the key space applied to ``table``."""

    def step() -> None:
        changes = space.propose(tx_size())
        try:
            target.apply_changes(table, changes, hold())
        except Exception:
            target.drop()
            if _resolve(lambda: target.landed(table, changes)):
                space.commit(changes)
                return
            raise
        space.commit(changes)

    return step


def append_step(target: SqlTarget, table: str, log_: AppendLog,
                batch: Callable[[], int]) -> Callable[[], None]:
    def step() -> None:
        ids = log_.propose(batch())
        try:
            target.insert_ids(table, ids)
        except Exception:
            target.drop()
            if _resolve(lambda: bool(target.execute(
                    f"SELECT 1 FROM {table} WHERE id = %s", (ids[0],)))):
                log_.commit(ids)
                return
            raise
        log_.commit(ids)

    return step


def _resolve(check: Callable[[], bool], timeout_s: float = 120.0) -> bool:
    """Run ``check`` until the database answers (it may be restarting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
