"""A real MariaDB server for tests, in a temporary datadir on a free port.

Initialised with ``mariadb-install-db`` and run as the ``mysql`` user when we are root.
Root connects over TCP on 127.0.0.1 without password; database ``test`` exists.
``MariaDBServer(binlog=True)`` runs it with a row binary log (``--log-bin``,
``binlog_format=ROW``, ``binlog_row_image=FULL``, ``binlog_row_metadata=FULL``, a
``server_id`` of its own) for ``type: mysql_binlog``; the fixtures of such servers are at
the end of this module.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.ports import free_port, wait_closed, wait_listening


class MariaDBServer:
    def __init__(self, port: int | None = None, *, binlog: bool = False,
                 server_id: int = 1) -> None:
        self.port = port or free_port()
        self.binlog = binlog
        self.server_id = server_id
        self.root = Path(tempfile.mkdtemp(prefix="cdc-maria-"))
        self.datadir = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        self.logfile = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        user = ["--user=mysql"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.root, "mysql", "mysql")
        if binlog:
            (self.root / "binlog").mkdir()
            if os.geteuid() == 0:
                shutil.chown(self.root / "binlog", "mysql", "mysql")
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", *user,
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True,
        )

    @property
    def url(self) -> str:
        """SQLAlchemy URL of database ``test``."""
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/test"

    def start(self) -> None:
        log = open(self.logfile, "ab")  # noqa: SIM115
        user = ["--user=mysql"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.socket}", *user,
             "--skip-name-resolve", "--innodb-flush-log-at-trx-commit=2",
             "--innodb-buffer-pool-size=64M", f"--pid-file={self.root / 'mysqld.pid'}",
             *self._log_options()],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_listening(self.port, timeout_s=60)
        self._ensure_test_db()

    def _log_options(self) -> list[str]:
        if not self.binlog:
            return ["--skip-log-bin"]
        return [f"--log-bin={self.root / 'binlog' / 'binlog'}", "--binlog-format=ROW",
                "--binlog-row-image=FULL", "--binlog-row-metadata=FULL",
                f"--server-id={self.server_id}", "--max-binlog-size=64M"]

    def _ensure_test_db(self) -> None:
        import pymysql

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = pymysql.connect(host="127.0.0.1", port=self.port, user="root")
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS test")
        conn.close()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        wait_closed(self.port)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        wait_closed(self.port)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- fixtures
# Registered in tests/conftest.py (``from tests.services.mariadb import ...``).


@pytest.fixture(scope="session")
def mariadb_binlog_server() -> Iterator[MariaDBServer]:
    """One MariaDB with a row binary log for the session; tests use their own databases.

    Tests that stop, kill, restart it or purge its logs use ``fresh_mariadb_binlog``."""
    server = MariaDBServer(binlog=True)
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def fresh_mariadb_binlog() -> Iterator[MariaDBServer]:
    """A MariaDB with a row binary log of the test's own, free to stop, kill and restart."""
    server = MariaDBServer(binlog=True)
    server.start()
    try:
        yield server
    finally:
        server.destroy()
