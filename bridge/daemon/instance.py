"""One daemon per state: the instance locks taken before anything else starts.

Two daemons on the same state (a systemd unit plus a manual run, two replicas of a
Deployment) would both capture and relay the same changes. :class:`InstanceGuard`
stops the second one before it touches anything:

- **state_dir** (always): an exclusive ``flock`` on ``state_dir/daemon.lock``, held for
  the daemon's whole life. The file holds the holder's pid, host and start time as
  ``key=value`` lines, read only to word the refusal. The kernel drops the lock when the
  process dies (``kill -9`` included), so a restart works at once; the file itself is
  never removed (removing a lock file lets two processes lock two different files).
  The descriptor is opened ``O_CLOEXEC`` (Python's default for ``os.open``, asked for
  explicitly here) and ``subprocess`` closes other descriptors anyway, so neither the
  relay child nor the embedded nats-server inherits it: a child that outlives a
  killed daemon cannot keep the lock.
- **PostgreSQL outbox** (``outbox.url: postgresql://...``): daemons on different
  machines have different state_dirs but may share one outbox schema. A session-level
  ``pg_try_advisory_lock`` on a key derived from the schema name, on a connection of
  its own (``application_name`` ``cdc-bridge <token> <pid>@<host>``, so a refusal can
  name the holder), is held for the daemon's life. :meth:`SchemaLock.watch` checks that
  connection every few seconds; when it is lost (a PostgreSQL restart drops the lock
  with the session) it re-acquires with the shared back-off while the database is
  down, and raises :class:`InstanceLocked` (fatal: the daemon stops with exit code 1)
  if another daemon took the lock in between. A lock still held by this process's own
  previous session (a half-open connection the server has not noticed yet; recognised
  by the random token, which two daemons never share even as pid 1 of same-named
  containers) is not a rival: that session is terminated and the lock taken again.

Group mode (``group.enabled``, :mod:`cdc_bridge.daemon.group`): several daemons share
the outbox on purpose, so the schema lock is taken in its *shared* form: every member
holds it at once, and it still keeps out a daemon without group mode (and a member
meets the exclusive lock of such a daemon), so the two kinds never run on one outbox.
The refusals end with a hint: how to run several daemons (a SQLite outbox cannot; a
PostgreSQL one needs ``group.enabled`` on every daemon).

Read-only commands (``status``, ``tail``, ``snapshot``, ``replay``, ``outbox ...``)
never take these locks. The first part of the module is pure (holder text, messages,
the lock key); the I/O classes follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from cdc_bridge.kernel.backoff import retrying
from cdc_bridge.kernel.errors import FatalError, RetryableError
from cdc_bridge.outbox.postgres import split_url

log = logging.getLogger("cdc_bridge.instance")

#: The lock file inside state_dir.
LOCK_FILE = "daemon.lock"
_APP_NAME = re.compile(r"^cdc-bridge [0-9a-f]+ (\d+)@(.*)$")
_PG_NAME_MAX = 63  # NAMEDATALEN - 1: PostgreSQL truncates application_name to this


class InstanceLocked(FatalError):
    """Another daemon holds the state_dir or the outbox schema."""


class LockUnavailable(RetryableError):
    """The outbox database cannot be reached to take or check the schema lock."""


# -- pure parts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lock: enough to tell the operator which process to stop."""

    pid: int | None
    host: str | None
    since: str | None

    @classmethod
    def this_process(cls) -> Holder:
        return cls(os.getpid(), socket.gethostname(), utc_iso(datetime.now(UTC)))

    def to_text(self) -> str:
        return f"pid={self.pid}\nhost={self.host}\nsince={self.since}\n"

    @classmethod
    def parse(cls, text: str) -> Holder:
        """Tolerant: a file being written (or garbage) gives unknown fields, not an error."""
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and value.strip() and value.strip() != "None":
                values[key.strip()] = value.strip()
        pid = values.get("pid", "")
        return cls(int(pid) if pid.isdigit() else None, values.get("host"), values.get("since"))

    def describe(self) -> str:
        pid = self.pid if self.pid is not None else "?"
        text = f"pid {pid} on host {self.host or '?'}"
        return text + (f", since {self.since}" if self.since else "")

    @classmethod
    def from_application_name(cls, name: str | None, since: str | None) -> Holder | None:
        match = _APP_NAME.match(name or "")
        if match is None:
            return None
        return cls(int(match.group(1)), match.group(2) or None, since)


def application_name(holder: Holder, token: str) -> str:
    """The lock connection's ``application_name``, as PostgreSQL will store it."""
    return f"cdc-bridge {token} {holder.pid}@{holder.host}"[:_PG_NAME_MAX]


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Appended to a refusal on a SQLite outbox: why, and the way to run several daemons.
SQLITE_HINT = ("; the SQLite outbox serves one daemon: to run several, share a PostgreSQL "
               "outbox with group.enabled: true (docs/group.md)")
#: Appended to a refusal on a PostgreSQL outbox outside group mode.
GROUP_HINT = ("; to run several daemons on one outbox, set group.enabled: true on every "
              "one of them (docs/group.md)")
#: Appended when a group member meets a single-instance daemon, or the other way round.
MIXED_HINT = ("; group members and a daemon without group.enabled cannot share an outbox: "
              "give every daemon the same group setting")


def state_dir_message(holder: Holder, state_dir: Path, hint: str = "") -> str:
    return (f"another cdc-bridge ({holder.describe()}) is running with state_dir "
            f"{state_dir}; stop it first{hint}")


def schema_message(schema: str, database: str, holder: Holder | None,
                   backend_pid: int | None, client: str | None, hint: str = "") -> str:
    backend = f"PostgreSQL backend pid {backend_pid if backend_pid is not None else '?'}"
    backend += f" from {client}" if client else ""
    who = f"{holder.describe()}; {backend}" if holder else backend
    return (f"another cdc-bridge ({who}) is running with outbox schema {schema} "
            f"in database {database}; stop it first{hint}")


def schema_lock_key(schema: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of one outbox schema."""
    digest = hashlib.sha256(f"cdc-bridge instance {schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def key_halves(key: int) -> tuple[int, int]:
    """How ``pg_locks`` shows a bigint advisory key: (classid, objid), high half first."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


# -- state_dir: flock ------------------------------------------------------------------


class StateDirLock:
    """An exclusive ``flock`` on ``state_dir/daemon.lock`` for this process's life."""

    def __init__(self, state_dir: Path, hint: str = "") -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self.hint = hint
        self._fd: int | None = None

    def acquire(self, holder: Holder) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise FatalError(f"cannot open the lock file {self.path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            os.close(fd)
            raise InstanceLocked(state_dir_message(Holder.parse(text),
                                                   self.state_dir.absolute(),
                                                   self.hint)) from None
        except OSError as e:
            os.close(fd)
            raise FatalError(f"cannot lock {self.path}: {e}") from e
        data = holder.to_text().encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def running_daemon(state_dir: Path) -> Holder | None:
    """The live daemon holding ``state_dir``'s lock, or ``None``.

    A probe with a shared lock: it fails only while a daemon holds the exclusive one,
    and is dropped at once, so a daemon starting meanwhile is not in the way for long."""
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
    except OSError:
        return None
    finally:
        os.close(fd)  # drops the probe's lock, if it got one
    return None


# -- PostgreSQL outbox: session advisory lock ------------------------------------------


_HOLDER_SQL = """
SELECT a.pid, host(a.client_addr), a.application_name, a.backend_start, current_database()
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
LIMIT 1
"""


class SchemaLock:
    """``pg_try_advisory_lock`` on one outbox schema, on a connection of its own.

    ``shared`` (group mode): the shared form of the same lock, which every member of
    a group holds at once and which keeps out a daemon without group mode (and the
    other way round)."""

    def __init__(self, url: str, holder: Holder, *, check_interval_s: float = 2.0,
                 connect_timeout_s: int = 10, shared: bool = False) -> None:
        self.shared = shared
        self.dsn, self.schema = split_url(url)
        self.key = schema_lock_key(self.schema)
        self.app_name = application_name(holder, os.urandom(4).hex())
        self.check_interval_s = check_interval_s
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def acquire(self) -> None:
        """At start: take the lock, waiting with back-off while the database is down
        (a daemon may start before its database); a rival daemon's lock is fatal."""
        async for attempt in retrying(f"instance lock on outbox schema {self.schema}", log,
                                      initial_s=0.5, max_s=10.0,
                                      retry_on=(LockUnavailable,)):
            with attempt:
                await self._try_acquire()

    async def _try_acquire(self) -> None:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=self.connect_timeout_s,
                application_name=self.app_name, keepalives=1, keepalives_idle=10,
                keepalives_interval=5, keepalives_count=3)
        except psycopg.OperationalError as e:
            raise LockUnavailable(f"outbox database unreachable: {_first_line(e)}") from e
        keep = False
        try:
            refusal = await self._take(conn)
            keep = refusal is None
        except psycopg.OperationalError as e:
            raise LockUnavailable(f"outbox database unreachable: {_first_line(e)}") from e
        finally:
            if keep:
                self._conn = conn
            else:
                await conn.close()
        if refusal is not None:
            raise refusal

    async def _take(self, conn: psycopg.AsyncConnection[Any]
                    ) -> InstanceLocked | LockUnavailable | None:
        """Take the lock on ``conn`` (None), or say why not: a rival daemon, our own
        stale session, or a holder that let go in between (tried again, a few times)."""
        for _ in range(3):
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock_shared(%s)" if self.shared
                else "SELECT pg_try_advisory_lock(%s)", (self.key,))
            got = await cur.fetchone()
            if got is not None and got[0]:
                return None
            cur = await conn.execute(_HOLDER_SQL, key_halves(self.key))
            row = await cur.fetchone()
            if row is None:
                continue  # released between the two statements
            pid, client, app, started, database = row
            if app == self.app_name:
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                return LockUnavailable(f"a previous session of this daemon (backend pid "
                                       f"{pid}) still holds the lock; terminated it")
            since = utc_iso(started) if isinstance(started, datetime) else None
            holder = Holder.from_application_name(app, since)
            return InstanceLocked(schema_message(self.schema, str(database), holder, pid,
                                                 client,
                                                 MIXED_HINT if self.shared else GROUP_HINT))
        return LockUnavailable("the lock is held but its holder is not visible")

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            await asyncio.wait_for(conn.execute("SELECT 1"), self.connect_timeout_s)
        except (psycopg.Error, OSError, TimeoutError):
            return False
        return True

    async def watch(self) -> None:
        """Forever: check the lock's connection; re-acquire it when it was lost."""
        while True:
            await asyncio.sleep(self.check_interval_s)
            if await self._alive():
                continue
            log.warning("instance lock on outbox schema %s lost with its connection; "
                        "re-acquiring", self.schema)
            await self.release()
            async for attempt in retrying(f"instance lock on outbox schema {self.schema}",
                                          log, initial_s=0.5, max_s=10.0,
                                          retry_on=(LockUnavailable,)):
                with attempt:
                    await self._try_acquire()
            log.info("instance lock on outbox schema %s re-acquired", self.schema)

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()  # ending the session drops the advisory lock


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


# -- both ------------------------------------------------------------------------------


class InstanceGuard:
    """The daemon's instance locks: state_dir always, the outbox schema on PostgreSQL."""

    def __init__(self, state_dir: Path, outbox_url: str, *, group: bool = False) -> None:
        self.holder = Holder.this_process()
        postgres = outbox_url.startswith(("postgresql://", "postgres://"))
        self.state_dir_lock = StateDirLock(state_dir, "" if postgres else SQLITE_HINT)
        self.schema_lock = (SchemaLock(outbox_url, self.holder, shared=group)
                            if postgres else None)

    async def acquire(self) -> None:
        """Take every lock or none; raises :class:`InstanceLocked` when one is held."""
        self.state_dir_lock.acquire(self.holder)
        if self.schema_lock is not None:
            try:
                await self.schema_lock.acquire()
            except BaseException:
                self.state_dir_lock.release()
                raise

    async def watch(self) -> None:
        """Keep the schema lock (re-acquiring after a lost connection); else nothing."""
        if self.schema_lock is not None:
            await self.schema_lock.watch()

    async def release(self) -> None:
        if self.schema_lock is not None:
            await self.schema_lock.release()
        self.state_dir_lock.release()
