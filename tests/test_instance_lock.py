"""One daemon per state, on real processes.

A second ``cdc-bridge run`` on the same state_dir, or on the same PostgreSQL outbox
schema from another state_dir, exits 1 at once with one line naming the holder and
starts nothing, while the first keeps delivering; ``kill -9`` of the first frees both
locks at once; a PostgreSQL restart does not cost the running daemon its schema lock,
and a rival that takes it while the connection is down stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_bridge.daemon.instance import (
    Holder,
    InstanceLocked,
    LockUnavailable,
    SchemaLock,
    StateDirLock,
    application_name,
    key_halves,
    schema_lock_key,
    state_dir_message,
)
from cdc_bridge.kernel.errors import FatalError
from tests.helpers import BridgeProcess, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port
from tests.services.postgres import PostgresServer

HOST = socket.gethostname()

# -- the pure parts --------------------------------------------------------------------


def test_holder_text_round_trip_and_refusal_wording() -> None:
    holder = Holder(1234, "h", "2026-11-26T09:30:00Z")
    assert Holder.parse(holder.to_text()) == holder
    assert state_dir_message(holder, Path("/x")) == (
        "another cdc-bridge (pid 1234 on host h, since 2026-11-26T09:30:00Z) is running "
        "with state_dir /x; stop it first")
    # a file caught mid-write, or garbage: unknown fields, never an error
    assert Holder.parse("") == Holder(None, None, None)
    assert Holder.parse("pid=12x\nnonsense\n").describe() == "pid ? on host ?"


def test_application_name_carries_pid_and_host_within_postgres_limit() -> None:
    name = application_name(Holder(42, "node-7", None), "ab12cd34")
    assert name == "cdc-bridge ab12cd34 42@node-7"
    assert Holder.from_application_name(name, "T") == Holder(42, "node-7", "T")
    long = application_name(Holder(42, "h" * 100, None), "ab12cd34")
    assert len(long) == 63
    parsed = Holder.from_application_name(long, None)
    assert parsed is not None and parsed.pid == 42
    assert Holder.from_application_name("psql", None) is None


def test_schema_key_is_stable_per_schema_and_splits_like_pg_locks() -> None:
    key = schema_lock_key("cdc_bridge")
    assert key == schema_lock_key("cdc_bridge") != schema_lock_key("cdc_bridge2")
    assert -(2 ** 63) <= key < 2 ** 63
    high, low = key_halves(key)
    assert 0 <= high < 2 ** 32 and 0 <= low < 2 ** 32
    assert ((high << 32) | low) == key & (2 ** 64 - 1)


def test_state_dir_lock_is_exclusive_non_inheritable_and_released(tmp_path: Path) -> None:
    first = StateDirLock(tmp_path)
    first.acquire(Holder(111, "a", "2026-01-01T00:00:00Z"))
    try:
        assert first._fd is not None and not os.get_inheritable(first._fd)
        with pytest.raises(InstanceLocked, match=r"\(pid 111 on host a, since 2026-01-01"):
            StateDirLock(tmp_path).acquire(Holder(222, "b", None))
    finally:
        first.release()
    again = StateDirLock(tmp_path)
    again.acquire(Holder(333, "c", None))  # released: the next one takes it at once
    again.release()
    assert isinstance(InstanceLocked("x"), FatalError)  # the daemon's exit code 1


# -- helpers for the process tests ------------------------------------------------------


def make_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, note TEXT)")


def insert_rows(path: Path, start: int, stop: int) -> None:
    with sqlite3.connect(path, timeout=30) as conn:
        conn.executemany("INSERT INTO invoices (id, note) VALUES (?, 'n')",
                         [(i,) for i in range(start, stop + 1)])


def bridge_config(path: Path, db: Path, state_dir: Path, nats: dict[str, Any],
                  outbox_url: str | None = None) -> Path:
    config: dict[str, Any] = {
        "state_dir": str(state_dir),
        "nats": {**nats, "stream": "CDC", "subject_prefix": "cdc", "ack_timeout": "3s"},
        "adapters": [{
            "name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
            "poll_interval": "100ms",
            "tables": [{"name": "invoices", "incrementing_column": "id"}],
        }],
    }
    if outbox_url is not None:
        config["outbox"] = {"url": outbox_url, "poll_interval": "100ms"}
    return write_config(path, config)


def wait_ids(nats_url: str, last: int) -> list[int]:
    """Wait until ids 1..last are all in the stream; return every id stored, in order."""
    def ids() -> list[int] | None:
        got = [m.body["data"]["after"]["id"] for m in stream_messages(nats_url)]
        return got if set(range(1, last + 1)) <= set(got) else None

    found: list[int] = wait_for(ids, timeout_s=60, what=f"events 1..{last}")
    return found


def wait_running(bridge: BridgeProcess) -> None:
    wait_for(lambda: "cdc-bridge running" in bridge.log() or not bridge.alive(),
             timeout_s=60, what="the bridge to start")
    assert bridge.alive(), bridge.log()


def refused(bridge: BridgeProcess, timeout_s: float = 30.0) -> str:
    """The refused bridge's whole output, after checking it exited 1 quickly."""
    assert bridge.proc is not None
    started = time.monotonic()
    code = bridge.proc.wait(timeout_s)
    log = bridge.log()
    assert code == 1, log
    assert time.monotonic() - started < 15, "the refusal must come at once"
    assert "cdc-bridge running" not in log and "relay process started" not in log, log
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{log}"
    return log


def holds_file(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    target = str(path.resolve())
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) == target:
                return True
        except FileNotFoundError:  # closed meanwhile
            continue
    return False


# -- state_dir --------------------------------------------------------------------------


def test_second_daemon_on_the_same_state_dir_exits_1_and_first_keeps_going(
        tmp_path: Path, nats_server: NatsServer) -> None:
    db = tmp_path / "legacy.db"
    make_source(db)
    insert_rows(db, 1, 100)
    state = tmp_path / "state"
    cfg = bridge_config(tmp_path / "bridge.yaml", db, state, {"url": nats_server.url})
    first = BridgeProcess(cfg, tmp_path / "first.log")
    first.start()
    assert first.proc is not None
    wait_ids(nats_server.url, 100)

    # the daemon holds the lock file; its relay child does not have it open at all
    lock_file = state / "daemon.lock"
    assert holds_file(first.proc.pid, lock_file)
    match = re.search(r"relay process started \(pid (\d+)\)", first.log())
    assert match, first.log()
    assert not holds_file(int(match.group(1)), lock_file)

    second = BridgeProcess(cfg, tmp_path / "second.log")
    second.start()
    log = refused(second)
    assert f"another cdc-bridge (pid {first.proc.pid} on host {HOST}, since " in log
    assert f") is running with state_dir {state}; stop it first" in log

    # other commands do not take the lock
    status = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "status", "-c", str(cfg)],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr

    assert first.alive(), first.log()
    insert_rows(db, 101, 200)
    wait_ids(nats_server.url, 200)

    # kill -9 of the daemon alone: the kernel drops the lock, a restart works at once
    first.kill9()
    third = BridgeProcess(cfg, tmp_path / "third.log")
    third.start()
    wait_running(third)
    insert_rows(db, 201, 300)
    ids = wait_ids(nats_server.url, 300)
    assert "another cdc-bridge" not in third.log()
    assert third.terminate() == 0, third.log()
    assert len(ids) == len(set(ids)) == 300


def test_second_daemon_starts_no_embedded_nats_server(tmp_path: Path) -> None:
    db = tmp_path / "legacy.db"
    make_source(db)
    state = tmp_path / "state"
    port = free_port()
    cfg = bridge_config(tmp_path / "bridge.yaml", db, state,
                        {"embedded": {"host": "127.0.0.1", "port": port}})
    first = BridgeProcess(cfg, tmp_path / "first.log")
    first.start()
    try:
        wait_running(first)
        second = BridgeProcess(cfg, tmp_path / "second.log")
        second.start()
        # without the lock this would be exit 2, "port ... already in use"
        log = refused(second)
        assert "is running with state_dir" in log and "already in use" not in log
        assert first.alive()
    finally:
        code = first.terminate()
    assert code == 0, first.log()


# -- PostgreSQL outbox ------------------------------------------------------------------


def lock_backend(dsn: str, daemon_pid: int) -> int | None:
    """The PostgreSQL backend holding a daemon's schema lock, if any."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE %s",
            (f"cdc-bridge % {daemon_pid}@%",)).fetchone()
    return None if row is None else int(row[0])


def test_two_daemons_sharing_a_pg_outbox_schema(
        tmp_path: Path, nats_server: NatsServer, postgres_server: PostgresServer) -> None:
    schema = f"lock_{uuid.uuid4().hex[:10]}"
    url = f"{postgres_server.dsn}?schema={schema}"
    db = tmp_path / "legacy.db"
    make_source(db)
    insert_rows(db, 1, 100)
    nats = {"url": nats_server.url}
    cfg_a = bridge_config(tmp_path / "a.yaml", db, tmp_path / "state_a", nats, url)
    cfg_b = bridge_config(tmp_path / "b.yaml", db, tmp_path / "state_b", nats, url)
    first = BridgeProcess(cfg_a, tmp_path / "a.log")
    first.start()
    assert first.proc is not None
    wait_ids(nats_server.url, 100)
    assert lock_backend(postgres_server.dsn, first.proc.pid) is not None

    second = BridgeProcess(cfg_b, tmp_path / "b.log")
    second.start()
    log = refused(second)
    assert f"another cdc-bridge (pid {first.proc.pid} on host {HOST}, since " in log
    assert f"is running with outbox schema {schema} in database postgres; stop it first" in log
    assert "from 127.0.0.1" in log

    assert first.alive(), first.log()
    insert_rows(db, 101, 200)
    wait_ids(nats_server.url, 200)

    first.kill9()  # its session ends with it: the lock is free at once
    second = BridgeProcess(cfg_b, tmp_path / "b2.log")
    second.start()
    wait_running(second)
    insert_rows(db, 201, 300)
    ids = wait_ids(nats_server.url, 300)
    assert second.terminate() == 0, second.log()
    assert len(ids) == len(set(ids)) == 300


def pg_outbox_setup(tmp_path: Path, nats_server: NatsServer, pg: PostgresServer,
                    rows: int) -> tuple[Path, Path]:
    """A legacy SQLite source holding ``rows`` rows and a bridge config whose outbox is
    schema ``cdc_bridge`` on ``pg``: (source path, config path)."""
    db = tmp_path / "legacy.db"
    make_source(db)
    insert_rows(db, 1, rows)
    cfg = bridge_config(tmp_path / "bridge.yaml", db, tmp_path / "state",
                        {"url": nats_server.url}, f"{pg.dsn}?schema=cdc_bridge")
    return db, cfg


def test_postgres_restart_the_daemon_reacquires_and_keeps_running(
        tmp_path: Path, nats_server: NatsServer, fresh_postgres: PostgresServer) -> None:
    db, cfg = pg_outbox_setup(tmp_path, nats_server, fresh_postgres, rows=100)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    assert bridge.proc is not None
    wait_ids(nats_server.url, 100)
    before = lock_backend(fresh_postgres.dsn, bridge.proc.pid)
    assert before is not None

    fresh_postgres.restart()
    wait_for(lambda: "outbox schema cdc_bridge re-acquired" in bridge.log(), timeout_s=60,
             what="the schema lock re-acquired")
    after = lock_backend(fresh_postgres.dsn, bridge.proc.pid)
    assert after is not None and after != before
    insert_rows(db, 101, 200)
    ids = wait_ids(nats_server.url, 200)
    log = bridge.log()
    assert "lost with its connection" in log
    assert bridge.alive(), log
    assert bridge.terminate() == 0, bridge.log()
    assert set(ids) == set(range(1, 201))


def test_outbox_database_down_at_start_the_daemon_waits_for_it(
        tmp_path: Path, nats_server: NatsServer, fresh_postgres: PostgresServer) -> None:
    _db, cfg = pg_outbox_setup(tmp_path, nats_server, fresh_postgres, rows=50)
    fresh_postgres.stop()
    waiting = "instance lock on outbox schema cdc_bridge failed (attempt 2)"
    # stopped while it waits: a clean exit, nothing started
    bridge = BridgeProcess(cfg, tmp_path / "bridge0.log")
    bridge.start()
    wait_for(lambda: waiting in bridge.log(), what="waiting for the outbox database")
    assert bridge.terminate() == 0, bridge.log()
    # the database comes up later: the daemon goes on and delivers
    bridge = BridgeProcess(cfg, tmp_path / "bridge1.log")
    bridge.start()
    wait_for(lambda: waiting in bridge.log(), what="waiting for the outbox database")
    assert bridge.alive(), bridge.log()
    fresh_postgres.start()
    ids = wait_ids(nats_server.url, 50)
    assert sorted(ids) == list(range(1, 51))
    assert bridge.terminate() == 0, bridge.log()


async def test_schema_lock_tells_its_own_stale_session_from_a_rival(
        postgres_server: PostgresServer) -> None:
    url = f"{postgres_server.dsn}?schema=lock_{uuid.uuid4().hex[:10]}"
    same = Holder(1, "bridge-0", None)  # pid 1 of two containers with the same host name
    mine = SchemaLock(url, same)
    await mine.acquire()
    stale = mine._conn
    assert stale is not None
    try:
        # another process that looks the same (pid, host) is still a rival
        with pytest.raises(InstanceLocked, match=r"\(pid 1 on host bridge-0, since "):
            await SchemaLock(url, same).acquire()
        # our own connection, given up for lost while the server still holds its lock:
        # that session is ended and the lock taken again
        mine._conn = None
        with pytest.raises(LockUnavailable, match="previous session of this daemon"):
            await mine._try_acquire()
        deadline = time.monotonic() + 30
        while mine._conn is None:  # the terminated backend exits asynchronously
            with contextlib.suppress(LockUnavailable):
                await mine._try_acquire()
            assert time.monotonic() < deadline, "the stale session kept the lock"
            await asyncio.sleep(0.05)
        assert mine._conn is not stale
        with pytest.raises(InstanceLocked):
            await SchemaLock(url, Holder(2, "other", None)).acquire()
    finally:
        await stale.close()
        await mine.release()
    other = SchemaLock(url, Holder(2, "other", None))
    await other.acquire()  # released: free for the next daemon
    await other.release()


def test_rival_taking_the_schema_lock_while_it_is_lost_stops_the_daemon(
        tmp_path: Path, nats_server: NatsServer, postgres_server: PostgresServer) -> None:
    schema = f"lock_{uuid.uuid4().hex[:10]}"
    dsn = postgres_server.dsn
    db = tmp_path / "legacy.db"
    make_source(db)
    insert_rows(db, 1, 50)
    cfg = bridge_config(tmp_path / "bridge.yaml", db, tmp_path / "state",
                        {"url": nats_server.url}, f"{dsn}?schema={schema}")
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    assert bridge.proc is not None
    wait_ids(nats_server.url, 50)
    backend = lock_backend(dsn, bridge.proc.pid)
    assert backend is not None

    # The rival queues for the lock first, so it gets it the moment the daemon's session
    # ends, before the daemon can reconnect: no race.
    rival = psycopg.connect(dsn, autocommit=True, application_name="rival")
    taken = threading.Event()

    def take() -> None:
        rival.execute("SELECT pg_advisory_lock(%s)", (schema_lock_key(schema),))
        taken.set()

    thread = threading.Thread(target=take)
    thread.start()
    try:
        with psycopg.connect(dsn, autocommit=True) as admin:
            wait_for(lambda: admin.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND NOT l.granted"
                " AND a.application_name = 'rival'").fetchone() == (1,),
                what="the rival waiting for the lock")
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        assert taken.wait(30), "the rival did not get the lock"
        assert bridge.proc.wait(60) == 1, bridge.log()
    finally:
        thread.join(30)
        rival.close()
    log = bridge.log()
    assert "instance lock: fatal: another cdc-bridge (PostgreSQL backend pid " in log
    assert f"is running with outbox schema {schema}" in log
    assert "stopped:" in log
