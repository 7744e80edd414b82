"""PostgreSQL set-up problems stop the bridge with an exact, actionable message (exit 1).

Each case runs the real bridge process against a real PostgreSQL and checks the exit
code, the guidance in the message, and that the DSN's password never shows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers import BridgeProcess, write_config
from tests.services.nats_server import NatsServer
from tests.services.postgres import PostgresServer

SECRET = "Pw-never-printed-913"


def run_until_exit(tmp: Path, nats: NatsServer, dsn: str,
                   timeout_s: float = 60) -> tuple[int, str]:
    cfg = write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats.url},
        "adapters": [{"name": "shop", "type": "postgres", "dsn": dsn,
                      "tables": ["public.orders"]}],
    })
    bridge = BridgeProcess(cfg, tmp / "bridge.log")
    bridge.start()
    assert bridge.proc is not None
    try:
        code = bridge.proc.wait(timeout_s)
    finally:
        if bridge.alive():
            bridge.terminate()
    return code, bridge.log()


@pytest.fixture(scope="module")
def replica_level_pg() -> Iterator[PostgresServer]:
    server = PostgresServer(extra_conf={"wal_level": "replica"})
    server.start()
    try:
        yield server
    finally:
        server.destroy()


def _with_password(dsn: str, user: str) -> str:
    return dsn.replace("postgres@", f"{user}:{SECRET}@", 1)


def test_wal_level_not_logical(tmp_path: Path, nats_server: NatsServer,
                               replica_level_pg: PostgresServer) -> None:
    code, log = run_until_exit(tmp_path, nats_server,
                               _with_password(replica_level_pg.dsn, "postgres"))
    assert code == 1, log
    assert "wal_level is 'replica'" in log
    assert "ALTER SYSTEM SET wal_level = logical" in log
    assert SECRET not in log


def test_role_without_replication_and_unknown_database(
        tmp_path: Path, nats_server: NatsServer, postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS setup_errors")
        conn.execute("CREATE DATABASE setup_errors")
        conn.execute("DROP ROLE IF EXISTS plain_user")
        conn.execute("CREATE ROLE plain_user LOGIN")
    with psycopg.connect(postgres_server.dsn_for("setup_errors"), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.orders (id int PRIMARY KEY)")
        conn.execute("GRANT SELECT ON public.orders TO plain_user")
    dsn = _with_password(postgres_server.dsn_for("setup_errors"), "plain_user")
    code, log = run_until_exit(tmp_path, nats_server, dsn)
    assert code == 1, log
    assert "lacks the REPLICATION attribute" in log
    assert 'ALTER ROLE "plain_user" REPLICATION' in log
    assert SECRET not in log

    missing = _with_password(postgres_server.dsn_for("no_such_db"), "postgres")
    second = tmp_path / "second"
    second.mkdir()
    code, log = run_until_exit(second, nats_server, missing)
    assert code == 1, log
    assert 'database "no_such_db" does not exist' in log
    assert "check the role and database names" in log
    assert SECRET not in log


def test_existing_publication_of_partitions_is_refused_with_the_fix(
        tmp_path: Path, nats_server: NatsServer, postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS setup_parted WITH (FORCE)")
        conn.execute("CREATE DATABASE setup_parted")
    with psycopg.connect(postgres_server.dsn_for("setup_parted"), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.orders (id int, r text, PRIMARY KEY (id, r))"
                     " PARTITION BY LIST (r)")
        conn.execute("CREATE TABLE orders_a PARTITION OF orders FOR VALUES IN ('a')")
        conn.execute("CREATE PUBLICATION mine FOR TABLE orders")
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"), "nats": {"url": nats_server.url},
        "adapters": [{"name": "shop", "type": "postgres",
                      "dsn": postgres_server.dsn_for("setup_parted"),
                      "tables": ["public.orders"], "publication": "mine",
                      "publication_mode": "existing"}]})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    assert bridge.proc is not None
    try:
        code = bridge.proc.wait(60)
    finally:
        if bridge.alive():
            bridge.terminate()
    assert code == 1, bridge.log()
    assert ("run ALTER PUBLICATION mine SET (publish_via_partition_root = true);"
            in bridge.log())
