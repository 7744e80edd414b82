"""The embedded nats-server's lifetime: it dies with the daemon, and a leftover of a
previous daemon of the same state_dir is stopped before a new one starts.

Without both, a ``kill -9`` of a daemon on the embedded default left nats-server holding
the port, and the restart failed with "port already in use".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cdc_bridge.daemon.embedded import leftover_pid, nats_server_binary
from tests.helpers import BridgeProcess, wait_for
from tests.services.ports import free_port, listening
from tests.test_instance_lock import (
    bridge_config,
    insert_rows,
    make_source,
    wait_ids,
    wait_running,
)


def _alive(pid: int) -> bool:
    """Running, not a zombie (a zombie's command line is empty)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def _setup(tmp_path: Path) -> tuple[Path, Path, int, str]:
    db = tmp_path / "legacy.db"
    make_source(db)
    port = free_port()
    cfg = bridge_config(tmp_path / "bridge.yaml", db, tmp_path / "state",
                        {"embedded": {"host": "127.0.0.1", "port": port}})
    return cfg, db, port, f"nats://127.0.0.1:{port}"


def test_kill9_of_the_daemon_takes_the_embedded_server_and_a_restart_works(
        tmp_path: Path) -> None:
    cfg, db, port, url = _setup(tmp_path)
    pid_file = tmp_path / "state" / "nats" / "nats-server.pid"
    insert_rows(db, 1, 100)
    bridge = BridgeProcess(cfg, tmp_path / "bridge0.log")
    bridge.start()
    try:
        wait_running(bridge)
        wait_ids(url, 100)
        server = leftover_pid(pid_file, tmp_path / "state" / "nats")
        assert server is not None and _alive(server)
        bridge.kill9()
        wait_for(lambda: not _alive(server), timeout_s=30,
                 what="the embedded nats-server to die with the daemon")
        insert_rows(db, 101, 200)  # written while nothing runs
        bridge = BridgeProcess(cfg, tmp_path / "bridge1.log")
        bridge.start()
        wait_running(bridge)
        ids = wait_ids(url, 200)
    finally:
        if bridge.alive():
            assert bridge.terminate() == 0, bridge.log()
    assert sorted(ids) == list(range(1, 201)), "each change once across the kill"
    assert "already in use" not in bridge.log()
    assert not listening(port), "the server stops with the daemon"


def test_a_leftover_server_of_this_state_dir_is_stopped_first(tmp_path: Path) -> None:
    cfg, db, port, url = _setup(tmp_path)
    store = tmp_path / "state" / "nats"
    store.mkdir(parents=True)
    pid_file = store / "nats-server.pid"
    # a server as a dead daemon would have left it: same store, same pid file, own session
    orphan = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store),
         "-P", str(pid_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        wait_for(lambda: listening(port), timeout_s=30, what="the orphan listening")
        wait_for(lambda: leftover_pid(pid_file, store) == orphan.pid, what="its pid file")
        insert_rows(db, 1, 50)
        bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
        bridge.start()
        try:
            wait_running(bridge)
            ids = wait_ids(url, 50)
            assert orphan.wait(30) is not None, "the orphan was stopped"
            assert f"stopping the embedded nats-server (pid {orphan.pid}) left running" in \
                bridge.log()
        finally:
            assert bridge.terminate() == 0, bridge.log()
        assert sorted(ids) == list(range(1, 51))
    finally:
        if orphan.poll() is None:
            os.kill(orphan.pid, signal.SIGKILL)
            orphan.wait()


def test_a_server_of_another_store_on_the_port_is_not_touched(tmp_path: Path) -> None:
    cfg, _db, port, _url = _setup(tmp_path)
    other = tmp_path / "other-store"
    other.mkdir()
    pid_file = tmp_path / "state" / "nats" / "nats-server.pid"
    pid_file.parent.mkdir(parents=True)
    stranger = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(other)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: listening(port), timeout_s=30, what="the other server listening")
        pid_file.write_text(str(stranger.pid))  # even a pid file naming it: not our store
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "cdc_bridge.cli", "run", "-c", str(cfg)],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "already in use" in proc.stderr
        assert time.monotonic() - started < 30
        assert stranger.poll() is None, "another store's server must be left alone"
    finally:
        os.kill(stranger.pid, signal.SIGKILL)
        stranger.wait()


def test_init_beside_a_running_daemon_leaves_its_embedded_server_alone(
        tmp_path: Path) -> None:
    cfg, db, _port, url = _setup(tmp_path)
    pid_file = tmp_path / "state" / "nats" / "nats-server.pid"
    insert_rows(db, 1, 50)
    bridge = BridgeProcess(cfg, tmp_path / "bridge0.log")
    bridge.start()
    try:
        wait_running(bridge)
        wait_ids(url, 50)
        server = leftover_pid(pid_file, tmp_path / "state" / "nats")
        assert server is not None
        init = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "init", "-c", str(cfg)],
                              capture_output=True, text=True, timeout=120)
        assert "using the running daemon's embedded nats-server" in init.stdout, init
        assert _alive(server) and leftover_pid(pid_file, tmp_path / "state" / "nats") == server
        insert_rows(db, 51, 60)  # the daemon still publishes through its own server
        wait_ids(url, 60)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    assert "stopping the embedded nats-server" not in bridge.log()
