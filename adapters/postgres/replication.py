"""The replication connection: psycopg's low-level ``pq`` layer driven from asyncio.

psycopg 3 has no replication API, but libpq does everything needed: a connection with
``replication=database`` accepts walsender commands (``IDENTIFY_SYSTEM``,
``CREATE_REPLICATION_SLOT``, ``START_REPLICATION``) over the simple query protocol, and
``START_REPLICATION`` switches it to COPY_BOTH, where ``PQgetCopyData`` yields the
server's messages and ``PQputCopyData`` carries our standby status updates.

Commands before streaming are few and short, so they run blocking in a worker thread.
Once streaming, the connection is non-blocking and the event loop watches its socket
with ``add_reader``: :meth:`ReplicationConnection.read_available` drains what libpq has
buffered without waiting, :meth:`wait_readable` parks until the socket has more. Any
libpq failure becomes :class:`cdc_bridge.kernel.errors.SourceUnavailable` (the supervisor restarts
the adapter from its checkpoint) unless it is one a person must fix (authentication,
pg_hba, exhausted slots), which becomes :class:`cdc_bridge.kernel.errors.SourceSetupError`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc_bridge.kernel.errors import SourceSetupError, SourceUnavailable

log = logging.getLogger("cdc_bridge.adapter.postgres")

_FATAL_HINTS = (
    ("no pg_hba.conf entry for replication connection",
     "add a 'host replication <role> <client address> <method>' line to pg_hba.conf "
     "and reload PostgreSQL"),
    ("password authentication failed", "check the user and password in dsn"),
    ("no pg_hba.conf entry for host", "add a 'host <database> <role> <client address> "
     "<method>' line to pg_hba.conf and reload PostgreSQL"),
    ("does not exist", "check the role and database names in dsn"),
    ("all replication slots are in use", "raise max_replication_slots or drop unused slots"),
    ("number of requested standby connections exceeds max_wal_senders",
     "raise max_wal_senders"),
    ("must be superuser or replication role", "run ALTER ROLE <role> REPLICATION;"),
    ("permission denied to start WAL sender", "run ALTER ROLE <role> REPLICATION;"),
)


@dataclass(frozen=True, slots=True)
class CreatedSlot:
    name: str
    consistent_point: str
    snapshot_name: str | None


def connection_error(what: str, message: str) -> Exception:
    text = " ".join(message.split())
    for needle, hint in _FATAL_HINTS:
        if needle in text:
            return SourceSetupError(f"{what}: {text}: {hint}")
    return SourceUnavailable(f"{what}: {text}")


def replication_conninfo(dsn: str, connect_timeout_s: float) -> str:
    params = conninfo_to_dict(dsn)
    params["replication"] = "database"
    params.setdefault("connect_timeout", str(max(1, int(connect_timeout_s))))
    params.setdefault("application_name", "cdc-bridge")
    return make_conninfo("", **params)


class ReplicationConnection:
    def __init__(self, dsn: str, connect_timeout_s: float = 10.0) -> None:
        self._conninfo = replication_conninfo(dsn, connect_timeout_s)
        self.pgconn: pq.abc.PGconn | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: asyncio.Future[None] | None = None

    # ---------------------------------------------------------------- commands

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        conn = await asyncio.to_thread(pq.PGconn.connect, self._conninfo.encode())
        if conn.status != pq.ConnStatus.OK:
            message = conn.get_error_message(encoding="utf-8")
            conn.finish()
            raise connection_error("replication connection failed", message)
        self.pgconn = conn

    async def command(self, text: str) -> list[tuple[str | None, ...]]:
        """Run one walsender command; rows as text."""
        conn = self._require()
        res = await asyncio.to_thread(conn.exec_, text.encode())
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise connection_error(f"replication command failed ({text.split()[0]})",
                         res.get_error_message(encoding="utf-8") or
                         conn.get_error_message(encoding="utf-8"))
        return [
            tuple(None if (v := res.get_value(r, c)) is None else bytes(v).decode()
                  for c in range(res.nfields))
            for r in range(res.ntuples)
        ]

    async def create_slot(self, slot: str, export_snapshot: bool) -> CreatedSlot:
        mode = "EXPORT_SNAPSHOT" if export_snapshot else "NOEXPORT_SNAPSHOT"
        rows = await self.command(f'CREATE_REPLICATION_SLOT "{slot}" LOGICAL pgoutput {mode}')
        name, point, snapshot, _plugin = rows[0]
        assert name is not None and point is not None
        return CreatedSlot(name, point, snapshot)

    async def start(self, slot: str, start_lsn: str, publication: str,
                    messages: bool = True) -> None:
        """``START_REPLICATION`` with pgoutput protocol 1; the connection is then streaming."""
        conn = self._require()
        options = f"proto_version '1', publication_names '{publication}'"
        if messages:
            options += ", messages 'true'"
        query = f'START_REPLICATION SLOT "{slot}" LOGICAL {start_lsn} ({options})'
        res = await asyncio.to_thread(conn.exec_, query.encode())
        if res.status != pq.ExecStatus.COPY_BOTH:
            raise connection_error("START_REPLICATION failed",
                         res.get_error_message(encoding="utf-8") or
                         conn.get_error_message(encoding="utf-8"))
        conn.nonblocking = 1

    # ---------------------------------------------------------------- streaming

    def read_available(self, limit: int = 5000) -> list[bytes]:
        """CopyData messages libpq already has, without waiting (may be empty)."""
        conn = self._require()
        out: list[bytes] = []
        try:
            conn.consume_input()
            while len(out) < limit:
                nbytes, data = conn.get_copy_data(1)
                if nbytes > 0:
                    out.append(bytes(data))
                elif nbytes == 0:
                    break
                else:  # -1: the server ended the COPY
                    res = conn.get_result()
                    msg = (res.get_error_message(encoding="utf-8") if res is not None
                           else "") or "the server ended the replication stream"
                    raise connection_error("replication stream ended", msg)
        except psycopg.OperationalError as e:
            raise connection_error("replication stream failed", str(e)) from None
        return out

    async def wait_readable(self, timeout_s: float) -> None:
        """Return when the socket is readable or after ``timeout_s``."""
        conn = self._require()
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = conn.socket

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_reader(fd, ready)
        self._waiting = fut
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            self._waiting = None
            loop.remove_reader(fd)

    def wake(self) -> None:
        """End a :meth:`wait_readable` in progress now (the loop has work)."""
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)

    async def send(self, data: bytes) -> None:
        conn = self._require()
        try:
            while conn.put_copy_data(data) == 0:
                await asyncio.sleep(0.01)
            while conn.flush() == 1:
                await self._wait_writable(conn.socket)
        except psycopg.OperationalError as e:
            raise connection_error("sending to the replication stream failed", str(e)) from None

    async def _wait_writable(self, fd: int) -> None:
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        loop.add_writer(fd, ready)
        try:
            await asyncio.wait_for(fut, 10.0)
        finally:
            loop.remove_writer(fd)

    def close(self) -> None:
        if self.pgconn is not None:
            self.pgconn.finish()
            self.pgconn = None

    def _require(self) -> pq.abc.PGconn:
        if self.pgconn is None:
            raise SourceUnavailable("replication connection is closed")
        return self.pgconn
