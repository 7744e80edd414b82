"""The real-service fixtures themselves work: PostgreSQL has wal_level=logical, MariaDB answers."""

from __future__ import annotations

import psycopg
import sqlalchemy as sa

from tests.services.mariadb import MariaDBServer
from tests.services.postgres import PostgresServer


def test_postgres_is_logical(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.dsn) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)


def test_mariadb_answers(mariadb_server: MariaDBServer) -> None:
    engine = sa.create_engine(mariadb_server.url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1 + 1")).scalar() == 2
    engine.dispose()
