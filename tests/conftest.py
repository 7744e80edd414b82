"""Shared fixtures (a real nats-server per test, PostgreSQL, MariaDB) and the two lanes.

Every test is in one of two lanes, selectable by marker:

* ``fast`` — the modules under ``tests/fast/``: pure logic, no servers, seconds in all
  (``pytest -m fast``); network connections are refused there, so a test that reaches
  a server fails loudly instead of slowing the lane down;
* ``service`` — every other module: real nats-server, PostgreSQL, MariaDB, files and
  bridge processes (``pytest -m service``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import STARTED
from tests.services.mariadb import (  # noqa: F401  (fixtures: row binlog servers)
    MariaDBServer,
    fresh_mariadb_binlog,
    mariadb_binlog_server,
)
from tests.services.nats_server import NatsServer
from tests.services.postgres import PostgresServer

FAST_DIR = Path(__file__).resolve().parent / "fast"


#: The longest fault tests (30 s to 2 min each): run by hand (``bash scripts/test.sh -m
#: by_hand``), left out of CI's service lane to keep it under its time limit. The short soak
#: and the group test stay in CI.
SLOW_TESTS = frozenset({
    "test_cluster.py::",
    "test_resnapshot_sql_poll.py::test_resnapshot_incrementing_and_diff",
    "test_mysql_binlog_faults.py::test_kill9_in_snapshot_and_in_large_transaction",
    "test_mysql_binlog_resnapshot.py::test_kill9_mid_resnapshot_resumes_and_completes",
    "test_resnapshot_pg.py::test_live_resnapshot_under_concurrent_writes",
    "test_resnapshot_pg.py::test_kill9_mid_resnapshot_resumes_and_completes",
    "test_partial_backfill.py::test_postgres_partial_backfill_live_kill9_and_http",
    "test_soak.py::test_short_soak_restored_state_dir_publishes_nothing_twice",
})


def _by_hand(item: pytest.Item) -> bool:
    where = f"{Path(str(item.path)).name}::{getattr(item, 'originalname', item.name)}"
    return any(where.startswith(s) for s in SLOW_TESTS)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fast = FAST_DIR in Path(str(item.path)).resolve().parents
        item.add_marker(pytest.mark.fast if fast else pytest.mark.service)
        if not fast and _by_hand(item):
            item.add_marker(pytest.mark.by_hand)


@pytest.fixture(autouse=True)
def _fast_lane_has_no_network(request: pytest.FixtureRequest,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("fast") is None:
        return
    real_connect = socket.socket.connect

    def refuse(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(
                f"a fast-lane test connected to {address}: mark it (or its module) "
                "@pytest.mark.service, or use a server fixture")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(autouse=True)
def _no_leftover_bridges() -> Iterator[None]:
    """Kill (process group and all) any bridge a test started and did not stop."""
    yield
    while STARTED:
        bridge = STARTED.pop()
        if bridge.proc is not None and bridge.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(bridge.proc.pid, signal.SIGKILL)
            bridge.proc.wait()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL (wal_level=logical) for the session; tests use their own databases.

    Tests that stop/kill the server should use ``fresh_postgres`` instead.
    """
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def fresh_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own, free to stop, kill and restart."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    server = MariaDBServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def fresh_mariadb() -> Iterator[MariaDBServer]:
    server = MariaDBServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()
