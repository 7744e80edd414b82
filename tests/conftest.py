"""Shared fixtures: a real nats-server per test, helpers to read the stream."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import STARTED
from tests.services.mariadb import MariaDBServer
from tests.services.nats_server import NatsServer
from tests.services.postgres import PostgresServer


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
