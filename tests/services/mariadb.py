"""A real MariaDB server for tests, in a temporary datadir on a free port.

Initialised with ``mariadb-install-db`` and run as the ``mysql`` user when we are root.
Root connects over TCP on 127.0.0.1 without password; database ``test`` exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.services.ports import free_port, wait_closed, wait_listening


class MariaDBServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cdc-maria-"))
        self.datadir = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        self.logfile = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        user = ["--user=mysql"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.root, "mysql", "mysql")
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
             "--skip-log-bin"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_listening(self.port, timeout_s=60)
        self._ensure_test_db()

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
