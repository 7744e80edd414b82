"""PostgreSQL outbox store: for deployments that want the outbox in a shared, backed-up
database (``outbox.url: postgresql://user@host/db``; ``?schema=name`` picks the schema,
default ``cdc_bridge``).

The schema and its tables are created on first start (under an advisory lock, so two
daemons starting at once do not race). ``seq`` is not a PostgreSQL sequence: a
sequence hands out numbers at insert time and leaves gaps on rollback, so a reader
could see ``seq`` 11 committed while 10 is still to come. Instead every append first
bumps the one row of ``store`` (``last_seq = last_seq + n``), which both serialises
appends (row lock) and numbers the batch without gaps; a rollback gives the numbers
back. Messages go in with ``COPY`` (one round trip per batch), then the checkpoint is
upserted, all in one transaction.

Published rows are deleted; autovacuum reclaims the space. A broken connection is
closed and reopened on the next call; the failing call raises
:class:`cdc_bridge.outbox.base.StoreUnavailable` (retryable).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cdc_bridge.outbox.base import (
    HeldRow,
    OutboxMessage,
    PendingRow,
    SchemaState,
    StoreStats,
    StoreUnavailable,
)
from cdc_bridge.outbox.fence import Fence, check_fence

DEFAULT_SCHEMA = "cdc_bridge"
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_T = TypeVar("_T")

_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.store (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    store_id text NOT NULL,
    last_seq bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.outbox (
    seq bigint PRIMARY KEY,
    msg_id text NOT NULL,
    subject text NOT NULL,
    payload bytea NOT NULL,
    headers jsonb,
    created_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.checkpoints (
    adapter text PRIMARY KEY,
    value jsonb NOT NULL,
    updated_ms bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.schemas (
    adapter text NOT NULL,
    tbl text NOT NULL,
    version integer NOT NULL,
    fingerprint text NOT NULL,
    entry jsonb NOT NULL,
    paused text,
    updated_ms bigint NOT NULL,
    PRIMARY KEY (adapter, tbl)
);
CREATE TABLE IF NOT EXISTS {s}.held (
    n bigserial PRIMARY KEY,
    adapter text NOT NULL,
    tbl text NOT NULL,
    msg_id text NOT NULL,
    subject text NOT NULL,
    payload bytea NOT NULL,
    headers jsonb,
    created_ms bigint NOT NULL
)
"""


def split_url(url: str) -> tuple[str, str]:
    """``postgresql://...?schema=x&sslmode=y`` -> (libpq URL without ``schema``, ``x``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = DEFAULT_SCHEMA
    rest = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            rest.append((key, value))
    if not _IDENT.match(schema):
        raise ValueError("outbox.url: schema must be a lower-case identifier [a-z_][a-z0-9_]*")
    return urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote))), schema


class PostgresStore:
    """:class:`cdc_bridge.outbox.base.OutboxStore` on tables of one PostgreSQL schema."""

    def __init__(self, url: str, connect_timeout_s: int = 10) -> None:
        self._dsn, self.schema = split_url(url)
        #: ``application_name`` from the URL if it names one (group mode names members).
        self._app = conninfo_to_dict(self._dsn).get("application_name") or "cdc-bridge-outbox"
        self._timeout = connect_timeout_s
        self._s = sql.Identifier(self.schema)
        self._local = threading.local()
        self._all: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self.store_id: str = self._run(self._create)

    # -- connections ------------------------------------------------------------------

    def _conn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._timeout,
                                   application_name=self._app)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _run(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """Run ``fn`` on this thread's connection; map connection loss to StoreUnavailable."""
        try:
            return fn(self._conn())
        except psycopg.OperationalError as e:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None
            cause = (str(e).strip().splitlines() or [""])[0].strip() or type(e).__name__
            raise StoreUnavailable(f"outbox database unavailable: {cause}") from e

    def _fenced(self, conn: psycopg.Connection[Any], fence: Fence | None, query: sql.Composed,
                args: tuple[Any, ...]) -> psycopg.Cursor[Any]:
        """One statement; with a ``fence``, in a transaction that first checks it."""
        if fence is None:
            return conn.execute(query, args)
        with conn.transaction():
            cur = conn.cursor()
            check_fence(cur, self._s, fence)
            return cur.execute(query, args)

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    def _create(self, conn: psycopg.Connection[Any]) -> str:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('cdc_bridge.outbox.ddl'))")
            for stmt in _DDL.split(";"):
                conn.execute(self._q(stmt))
            conn.execute(self._q("INSERT INTO {s}.store (store_id, last_seq) VALUES (%s, 0)"
                                 " ON CONFLICT (one) DO NOTHING"), (str(uuid.uuid4()),))
            row = conn.execute(self._q("SELECT store_id FROM {s}.store")).fetchone()
        assert row is not None
        return str(row[0])

    # -- the protocol -----------------------------------------------------------------

    def append(
        self, adapter: str, messages: list[OutboxMessage], checkpoint: dict[str, Any] | None,
        schemas: Sequence[SchemaState] = (), held: Sequence[HeldRow] = (),
        *, fence: Fence | None = None,
    ) -> int:
        """``fence`` (group mode): commit only while that lease holds, else
        :class:`cdc_bridge.outbox.fence.LeaseLost` and nothing is written."""
        def do(conn: psycopg.Connection[Any]) -> int:
            now = int(time.time() * 1000)
            with conn.transaction(), conn.cursor() as cur:
                if fence is not None:
                    check_fence(cur, self._s, fence)
                cur.execute(self._q("UPDATE {s}.store SET last_seq = last_seq + %s"
                                    " RETURNING last_seq"), (len(messages),))
                row = cur.fetchone()
                assert row is not None
                last = int(row[0])
                if messages:
                    self._copy_pending(cur, last - len(messages), messages, now)
                if checkpoint is not None:
                    cur.execute(self._q(
                        "INSERT INTO {s}.checkpoints (adapter, value, updated_ms)"
                        " VALUES (%s, %s::jsonb, %s) ON CONFLICT (adapter) DO UPDATE"
                        " SET value = excluded.value, updated_ms = excluded.updated_ms"),
                        (adapter, json.dumps(checkpoint), now))
                if schemas or held:
                    last = self._schemas_and_held(cur, adapter, schemas, held, now) or last
            return last

        return self._run(do)

    def _schemas_and_held(self, cur: psycopg.Cursor[Any], adapter: str,
                          schemas: Sequence[SchemaState], held: Sequence[HeldRow],
                          now: int) -> int | None:
        """Store the schema states and the held rows; held rows of a table no longer
        paused (released by another process meanwhile) become pending instead. Returns
        the new last ``seq`` if pending rows were added."""
        if schemas:
            cur.executemany(self._q(
                "INSERT INTO {s}.schemas (adapter, tbl, version, fingerprint, entry, paused,"
                " updated_ms) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s)"
                " ON CONFLICT (adapter, tbl) DO UPDATE SET version = excluded.version,"
                " fingerprint = excluded.fingerprint, entry = excluded.entry,"
                " paused = excluded.paused, updated_ms = excluded.updated_ms"),
                [(adapter, st.table, st.version, st.fingerprint, json.dumps(st.entry),
                  st.paused, now) for st in schemas])
        if not held:
            return None
        cur.execute(self._q("SELECT tbl FROM {s}.schemas WHERE adapter = %s"
                            " AND paused IS NOT NULL"), (adapter,))
        paused = {str(t) for (t,) in cur.fetchall()}
        keep = [(tbl, m) for tbl, m in held if tbl in paused]
        flowing = [m for tbl, m in held if tbl not in paused]  # released meanwhile
        if keep:
            with cur.copy(self._q("COPY {s}.held (adapter, tbl, msg_id, subject, payload,"
                                  " headers, created_ms) FROM STDIN")) as copy:
                for tbl, m in keep:
                    copy.write_row((adapter, tbl, m.msg_id, m.subject, m.payload,
                                    json.dumps(m.headers) if m.headers else None,
                                    m.created_ms or now))
        if not flowing:
            return None
        cur.execute(self._q("UPDATE {s}.store SET last_seq = last_seq + %s"
                            " RETURNING last_seq"), (len(flowing),))
        last = int(cur.fetchone()[0])  # type: ignore[index]
        self._copy_pending(cur, last - len(flowing), flowing, now)
        return last

    def _copy_pending(self, cur: psycopg.Cursor[Any], after: int,
                      messages: Sequence[OutboxMessage], now: int) -> None:
        """``messages`` as pending rows numbered from ``after + 1`` (one COPY)."""
        seq = after
        with cur.copy(self._q("COPY {s}.outbox (seq, msg_id, subject, payload, headers,"
                              " created_ms) FROM STDIN")) as copy:
            for m in messages:
                seq += 1
                copy.write_row((seq, m.msg_id, m.subject, m.payload,
                                json.dumps(m.headers) if m.headers else None,
                                m.created_ms or now))

    def schema_states(self, adapter: str | None = None) -> list[tuple[str, SchemaState]]:
        def do(conn: psycopg.Connection[Any]) -> list[tuple[str, SchemaState]]:
            query = ("SELECT adapter, tbl, version, fingerprint, entry, paused"
                     " FROM {s}.schemas WHERE %s::text IS NULL OR adapter = %s"
                     " ORDER BY adapter, tbl")
            rows = conn.execute(self._q(query), (adapter, adapter)).fetchall()
            return [(a, SchemaState(t, int(v), f, dict(e), p)) for a, t, v, f, e, p in rows]

        return self._run(do)

    def release(self, adapter: str, table: str) -> int:
        def do(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(self._q("UPDATE {s}.schemas SET paused = NULL"
                                    " WHERE adapter = %s AND tbl = %s"), (adapter, table))
                if not cur.rowcount:
                    raise KeyError(f"{adapter}: no schema of table {table!r}")
                cur.execute(self._q("SELECT count(*) FROM {s}.held"
                                    " WHERE adapter = %s AND tbl = %s"), (adapter, table))
                count = int(cur.fetchone()[0])  # type: ignore[index]
                if not count:
                    return 0
                cur.execute(self._q("UPDATE {s}.store SET last_seq = last_seq + %s"
                                    " RETURNING last_seq"), (count,))
                last = int(cur.fetchone()[0])  # type: ignore[index]
                cur.execute(self._q(
                    "INSERT INTO {s}.outbox (seq, msg_id, subject, payload, headers,"
                    " created_ms) SELECT %s + row_number() OVER (ORDER BY n), msg_id,"
                    " subject, payload, headers, created_ms FROM {s}.held"
                    " WHERE adapter = %s AND tbl = %s"), (last - count, adapter, table))
                cur.execute(self._q("DELETE FROM {s}.held WHERE adapter = %s AND tbl = %s"),
                            (adapter, table))
            return count

        return self._run(do)

    def held_counts(self) -> dict[tuple[str, str], int]:
        def do(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], int]:
            rows = conn.execute(self._q("SELECT adapter, tbl, count(*) FROM {s}.held"
                                        " GROUP BY adapter, tbl")).fetchall()
            return {(str(a), str(t)): int(n) for a, t, n in rows}

        return self._run(do)

    def checkpoint(self, adapter: str) -> dict[str, Any] | None:
        def do(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
            row = conn.execute(self._q("SELECT value FROM {s}.checkpoints WHERE adapter = %s"),
                               (adapter,)).fetchone()
            return None if row is None else dict(row[0])

        return self._run(do)

    def checkpoints(self) -> dict[str, dict[str, Any]]:
        def do(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
            rows = conn.execute(self._q("SELECT adapter, value FROM {s}.checkpoints")).fetchall()
            return {str(a): dict(v) for a, v in rows}

        return self._run(do)

    def forget(self, adapter: str) -> bool:
        def do(conn: psycopg.Connection[Any]) -> bool:
            cur = conn.execute(self._q("DELETE FROM {s}.checkpoints WHERE adapter = %s"),
                               (adapter,))
            return cur.rowcount > 0

        return self._run(do)

    def pending(self, after_seq: int, limit: int, *, fence: Fence | None = None
                ) -> list[PendingRow]:
        def do(conn: psycopg.Connection[Any]) -> list[PendingRow]:
            rows = self._fenced(conn, fence, self._q(
                "SELECT seq, msg_id, subject, payload, headers, created_ms FROM {s}.outbox"
                " WHERE seq > %s ORDER BY seq LIMIT %s"), (after_seq, limit)).fetchall()
            return [PendingRow(seq, OutboxMessage(mid, subj, bytes(body), h, created))
                    for seq, mid, subj, body, h, created in rows]

        return self._run(do)

    def remove(self, up_to_seq: int, *, fence: Fence | None = None) -> int:
        def do(conn: psycopg.Connection[Any]) -> int:
            return self._fenced(conn, fence, self._q("DELETE FROM {s}.outbox WHERE seq <= %s"),
                                (up_to_seq,)).rowcount

        return self._run(do)

    def compact(self) -> None:
        """Nothing to do: autovacuum reclaims the space of deleted rows."""

    def stats(self) -> StoreStats:
        def do(conn: psycopg.Connection[Any]) -> StoreStats:
            row = conn.execute(self._q(
                "SELECT (SELECT last_seq FROM {s}.store),"
                " (SELECT seq FROM {s}.outbox ORDER BY seq LIMIT 1),"
                " (SELECT created_ms FROM {s}.outbox ORDER BY seq LIMIT 1),"
                " pg_total_relation_size(%s)"), (f"{self.schema}.outbox",)).fetchone()
            assert row is not None
            last, first, oldest, size = row
            if first is None:
                return StoreStats(0, None, int(size), 0, int(last))
            return StoreStats(int(last) - int(first) + 1, int(oldest), int(size), int(first),
                              int(last))

        return self._run(do)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
