"""A real PostgreSQL 15 cluster with ``wal_level=logical`` for tests.

``initdb``/``pg_ctl`` refuse to run as root, so when we are root they run as the
``postgres`` user (``runuser -u postgres --``) in a temporary directory it owns. The
server listens on a free port on 127.0.0.1 with trust auth; tests can stop, kill -9 and
restart it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.services.ports import free_port, wait_closed, wait_listening


def pg_bindir() -> Path:
    """Where initdb/pg_ctl live: ``pg_config --bindir``, else the newest Debian layout."""
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        bindir = Path(out.stdout.strip())
        if (bindir / "initdb").exists():
            return bindir
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: run scripts/setup.sh "
                           "--with-test-servers (installs Debian's postgresql)")
    return found[-1].parent


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class PostgresServer:
    def __init__(self, port: int | None = None, extra_conf: dict[str, str] | None = None):
        self.port = port or free_port()
        self.bindir = pg_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="cdc-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.extra_conf = extra_conf or {}
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            _as_postgres([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                          "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]),
            check=True, capture_output=True,
        )
        conf = {
            "wal_level": "logical", "max_wal_senders": "20", "max_replication_slots": "20",
            "listen_addresses": "'127.0.0.1'", "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'", "fsync": "off",
            "synchronous_commit": "on", "full_page_writes": "off",
            "wal_sender_timeout": "60s", "shared_buffers": "64MB",
            **self.extra_conf,
        }
        with open(self.datadir / "postgresql.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        with open(self.datadir / "pg_hba.conf", "a") as f:
            f.write("host replication all 127.0.0.1/32 trust\n")

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l",
                          str(self.logfile), "-w", "-t", "60", "start"]),
            check=True, capture_output=True,
        )
        wait_listening(self.port)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode,
                          "-w", "-t", "60", "stop"]),
            capture_output=True,
        )
        wait_closed(self.port)

    def kill9(self) -> None:
        """Crash the whole server: SIGKILL the postmaster and every backend it started.

        Killing only the postmaster leaves backends holding shared memory for a while, and
        an immediate start then fails; a real crash (OOM killer, power) takes them all.
        """
        pidfile = self.datadir / "postmaster.pid"
        pid = int(pidfile.read_text().splitlines()[0])
        children = _children(pid)
        for victim in (pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in (pid, *children)) and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_closed(self.port)
        # The dead postmaster may linger as a zombie when PID 1 does not reap orphans;
        # PostgreSQL would take its PID for a live server. After a real crash the PID is
        # gone, so the lock file is stale: remove it as a reboot effectively would.
        for stale in (pidfile, self.root / f".s.PGSQL.{self.port}.lock"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
