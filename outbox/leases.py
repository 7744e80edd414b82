"""Members and leases of a group: two tables in the PostgreSQL outbox schema.

``members``: one row per daemon of the group (``member_id``), with a random ``token``
per process (two processes configured with the same id are told apart), a heartbeat
and an expiry. ``leases``: one row per resource (each adapter, and the relay,
:data:`cdc_bridge.outbox.fence.RELAY_RESOURCE`) with its ``owner`` (NULL: free), an
``epoch`` that grows by one each time the resource changes hands, and ``expires_at``.

Every time is the database's (``clock_timestamp()``): members never compare their
own clocks with each other's; a member only learns ages and remaining times, in
seconds, as the database computes them. A lease is taken only when it is free or
expired (:meth:`LeaseDb.acquire`, which bumps the epoch), renewed only by its owner
with the same epoch before it expires (:meth:`LeaseDb.renew`) and given back with
:meth:`LeaseDb.release`. The writes the lease protects are checked against it in their
own transaction (:mod:`cdc_bridge.outbox.fence`).

Synchronous, one connection, autocommit: the group loop drives it from a thread.
``lock_timeout`` bounds the wait for a lease row locked by a write in progress (the
takeover is then tried again next round); a lost connection raises
:class:`cdc_bridge.outbox.base.StoreUnavailable` and is reopened on the next call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from cdc_bridge.outbox.base import StoreUnavailable
from cdc_bridge.outbox.fence import Fence
from cdc_bridge.outbox.postgres import split_url

_T = TypeVar("_T")

_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.members (
    member_id text PRIMARY KEY,
    token text NOT NULL,
    host text,
    pid integer,
    info jsonb,
    joined_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.leases (
    resource text PRIMARY KEY,
    owner text,
    epoch bigint NOT NULL DEFAULT 0,
    acquired_at timestamptz,
    renewed_at timestamptz,
    expires_at timestamptz
)
"""

#: Members expired for longer than this are deleted (they only clutter ``status``).
FORGET_MEMBERS_AFTER_S = 300


@dataclass(frozen=True, slots=True)
class MemberRow:
    member_id: str
    host: str | None
    pid: int | None
    live: bool
    #: Seconds since its last heartbeat, by the database clock.
    heartbeat_age_s: float
    joined_age_s: float


@dataclass(frozen=True, slots=True)
class LeaseRow:
    resource: str
    owner: str | None
    epoch: int
    #: Not expired (by the database clock) and owned.
    held: bool
    #: Seconds since it was taken / last renewed; seconds left (negative: expired).
    acquired_age_s: float | None
    renewed_age_s: float | None
    expires_in_s: float | None


@dataclass(frozen=True, slots=True)
class GroupRows:
    members: list[MemberRow]
    leases: list[LeaseRow]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``status`` and ``/status`` (ages rounded to 0.1s)."""
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {
            "members": [{"member_id": m.member_id, "host": m.host, "pid": m.pid,
                         "live": m.live, "heartbeat_age_s": r(m.heartbeat_age_s)}
                        for m in self.members],
            "leases": [{"resource": x.resource, "owner": x.owner if x.held else None,
                        "epoch": x.epoch, "age_s": r(x.acquired_age_s),
                        "renewed_age_s": r(x.renewed_age_s),
                        "expires_in_s": r(x.expires_in_s)} for x in self.leases],
        }


def outbox_application_name(member_id: str) -> str:
    """The ``application_name`` of a member's outbox sessions (as PostgreSQL keeps it)."""
    return f"cdc-bridge-outbox {member_id}"[:63]


def with_query(url: str, key: str, value: str) -> str:
    """``url`` with the query parameter ``key`` set to ``value`` (replacing it)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    query.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def with_session_options(url: str, options: dict[str, str]) -> str:
    """``url`` with ``-c name=value`` settings added to its libpq ``options``."""
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    given = " ".join(v for k, v in query if k == "options")
    extra = " ".join(f"-c {k}={v}" for k, v in options.items())
    return with_query(url, "options", f"{given} {extra}".strip())


class LeaseDb:
    """The group's tables, on one connection of its own."""

    def __init__(self, url: str, *, connect_timeout_s: int = 5, lock_timeout_ms: int = 1500,
                 application_name: str = "cdc-bridge-group") -> None:
        self._dsn, self.schema = split_url(url)
        self._s = sql.Identifier(self.schema)
        self._timeout = connect_timeout_s
        self._lock_timeout_ms = lock_timeout_ms
        self._app = application_name
        self._conn: psycopg.Connection[Any] | None = None

    # -- plumbing ---------------------------------------------------------------------

    def _run(self, fn: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        try:
            conn = self._conn
            if conn is None or conn.closed:
                conn = psycopg.connect(
                    self._dsn, autocommit=True, connect_timeout=self._timeout,
                    application_name=self._app, keepalives=1, keepalives_idle=5,
                    keepalives_interval=2, keepalives_count=2,
                    options=f"-c lock_timeout={self._lock_timeout_ms}"
                            f" -c statement_timeout={self._timeout * 1000}")
                self._conn = conn
            return fn(conn)
        except psycopg.Error as e:  # lost connection, timeouts, a server going down
            if isinstance(e, psycopg.errors.LockNotAvailable):
                raise
            self.close()
            cause = (str(e).strip().splitlines() or [""])[0].strip() or type(e).__name__
            raise StoreUnavailable(f"outbox database unavailable: {cause}") from e

    def _q(self, text: str) -> sql.Composed:
        return sql.SQL(text).format(s=self._s)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # -- set-up -----------------------------------------------------------------------

    def ensure(self) -> None:
        """Create the schema and the two tables if missing (idempotent, race-free)."""
        def do(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('cdc_bridge.outbox.ddl'))")
                for stmt in _DDL.split(";"):
                    conn.execute(self._q(stmt))

        self._run(do)

    # -- members ----------------------------------------------------------------------

    def heartbeat(self, member_id: str, token: str, host: str, pid: int, ttl_s: float,
                  info: dict[str, Any] | None = None) -> bool:
        """Insert or refresh this member's row; ``False`` when another live process
        (another token) has the same ``member_id``."""
        def do(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(self._q(
                "INSERT INTO {s}.members (member_id, token, host, pid, info, joined_at,"
                " heartbeat_at, expires_at) VALUES (%s, %s, %s, %s, %s::jsonb,"
                " clock_timestamp(), clock_timestamp(),"
                " clock_timestamp() + %s * interval '1 second')"
                " ON CONFLICT (member_id) DO UPDATE SET token = excluded.token,"
                " host = excluded.host, pid = excluded.pid, info = excluded.info,"
                " joined_at = CASE WHEN {s}.members.token = excluded.token"
                " THEN {s}.members.joined_at ELSE excluded.joined_at END,"
                " heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at"
                " WHERE {s}.members.token = excluded.token"
                " OR {s}.members.expires_at <= clock_timestamp()"
                " RETURNING member_id"),
                (member_id, token, host, pid, json.dumps(info or {}), ttl_s)).fetchone()
            conn.execute(self._q(
                "DELETE FROM {s}.members WHERE expires_at < clock_timestamp()"
                " - %s * interval '1 second'"), (FORGET_MEMBERS_AFTER_S,))
            return row is not None

        return self._run(do)

    def end_sessions(self, application_names: list[str]) -> int:
        """Terminate the outbox sessions of members that are gone (expired): a process
        paused in the middle of a commit keeps its locks (the ``seq`` row, its lease row)
        for as long as it is paused, and no server timeout ends a ``COPY`` waiting for
        its data. Returns how many sessions were ended."""
        def do(conn: psycopg.Connection[Any]) -> int:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name = ANY(%s)", (application_names,)).fetchall()
            return sum(1 for (ok,) in rows if ok)

        return self._run(do)

    def leave(self, member_id: str, token: str) -> None:
        """Delete this member's row (a clean stop: the others rebalance at once)."""
        self._run(lambda conn: conn.execute(self._q(
            "DELETE FROM {s}.members WHERE member_id = %s AND token = %s"),
            (member_id, token)))

    # -- the view ---------------------------------------------------------------------

    def rows(self) -> GroupRows:
        """Members and leases with ages computed by the database."""
        def do(conn: psycopg.Connection[Any]) -> GroupRows:
            members = conn.execute(self._q(
                "SELECT member_id, host, pid, expires_at > clock_timestamp(),"
                " extract(epoch FROM clock_timestamp() - heartbeat_at)::float8,"
                " extract(epoch FROM clock_timestamp() - joined_at)::float8"
                " FROM {s}.members ORDER BY member_id")).fetchall()
            leases = conn.execute(self._q(
                "SELECT resource, owner, epoch,"
                " owner IS NOT NULL AND expires_at > clock_timestamp(),"
                " extract(epoch FROM clock_timestamp() - acquired_at)::float8,"
                " extract(epoch FROM clock_timestamp() - renewed_at)::float8,"
                " extract(epoch FROM expires_at - clock_timestamp())::float8"
                " FROM {s}.leases ORDER BY resource")).fetchall()
            return GroupRows([MemberRow(*m) for m in members],
                             [LeaseRow(r, o, int(e), bool(h), a, rn, x)
                              for r, o, e, h, a, rn, x in leases])

        return self._run(do)

    # -- leases -----------------------------------------------------------------------

    def acquire(self, resource: str, owner: str, ttl_s: float) -> int | None:
        """Take ``resource`` if it is free or expired: its new epoch, else ``None``.

        The row is locked ``FOR UPDATE`` first: that waits for a fenced write of the
        previous owner still in progress (``lock_timeout``: then ``None``, next round)."""
        def do(conn: psycopg.Connection[Any]) -> int | None:
            with conn.transaction():
                row = conn.execute(self._q(
                    "SELECT owner IS NULL OR expires_at IS NULL"
                    " OR expires_at <= clock_timestamp() FROM {s}.leases"
                    " WHERE resource = %s FOR UPDATE"), (resource,)).fetchone()
                if row is None:
                    got = conn.execute(self._q(
                        "INSERT INTO {s}.leases (resource, owner, epoch, acquired_at,"
                        " renewed_at, expires_at) VALUES (%s, %s, 1, clock_timestamp(),"
                        " clock_timestamp(), clock_timestamp() + %s * interval '1 second')"
                        " ON CONFLICT (resource) DO NOTHING RETURNING epoch"),
                        (resource, owner, ttl_s)).fetchone()
                elif row[0]:
                    got = conn.execute(self._q(
                        "UPDATE {s}.leases SET owner = %s, epoch = epoch + 1,"
                        " acquired_at = clock_timestamp(), renewed_at = clock_timestamp(),"
                        " expires_at = clock_timestamp() + %s * interval '1 second'"
                        " WHERE resource = %s RETURNING epoch"),
                        (owner, ttl_s, resource)).fetchone()
                else:
                    got = None
            return None if got is None else int(got[0])

        try:
            return self._run(do)
        except psycopg.errors.LockNotAvailable:
            return None  # a write of the holder is in progress: next round

    def renew(self, fence: Fence, ttl_s: float) -> bool:
        """Extend a lease still held with this epoch and not expired."""
        def do(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(self._q(
                "UPDATE {s}.leases SET renewed_at = clock_timestamp(),"
                " expires_at = clock_timestamp() + %s * interval '1 second'"
                " WHERE resource = %s AND owner = %s AND epoch = %s"
                " AND expires_at > clock_timestamp() RETURNING epoch"),
                (ttl_s, fence.resource, fence.owner, fence.epoch)).fetchone()
            return row is not None

        try:
            return self._run(do)
        except psycopg.errors.LockNotAvailable:
            return True  # our own write holds the row: it is ours; renewed next round

    def holds(self, fence: Fence) -> bool:
        """The lease is still this fence's and not expired."""
        def do(conn: psycopg.Connection[Any]) -> bool:
            return conn.execute(self._q(
                "SELECT 1 FROM {s}.leases WHERE resource = %s AND owner = %s AND epoch = %s"
                " AND expires_at > clock_timestamp()"),
                (fence.resource, fence.owner, fence.epoch)).fetchone() is not None

        return self._run(do)

    def release(self, fence: Fence) -> bool:
        """Give a lease back (after its work stopped): free at once for the next owner."""
        def do(conn: psycopg.Connection[Any]) -> bool:
            row = conn.execute(self._q(
                "UPDATE {s}.leases SET owner = NULL, expires_at = clock_timestamp()"
                " WHERE resource = %s AND owner = %s AND epoch = %s RETURNING epoch"),
                (fence.resource, fence.owner, fence.epoch)).fetchone()
            return row is not None

        try:
            return self._run(do)
        except psycopg.errors.LockNotAvailable:
            return False  # a write still holds the row: the lease expires by itself
