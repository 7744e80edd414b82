"""Conformance harnesses, one module per registered source type (``tests/harnesses/<type>.py``).

Each module defines ``open_harness(request, workdir)``, an async context manager yielding
a :class:`tests.conformance.Harness` for that type; :mod:`tests.test_source_conformance`
loads it by the type's name. This package also holds what several harnesses share: a
throw-away PostgreSQL database (with its slots and roles) on the session server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import psycopg

from tests.services.ports import free_port
from tests.services.postgres import PostgresServer


def unique(prefix: str) -> str:
    """A name no other test uses: ``<prefix>_<12 hex digits>`` (a valid identifier)."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return free_port()


class PgDatabase:
    """A database of its own on the session PostgreSQL, and roles created for it.

    :meth:`drop` removes the database with every replication slot in it, then the roles.
    """

    def __init__(self, server: PostgresServer, prefix: str = "conf") -> None:
        self.server = server
        self.name = unique(prefix)
        self.roles: list[str] = []
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.name}")

    def dsn(self, user: str = "postgres") -> str:
        return self.server.dsn_for(self.name, user)

    def run(self, *statements: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run statements as the superuser in one transaction; rows of the last one."""
        rows: list[tuple[Any, ...]] = []
        with psycopg.connect(self.dsn()) as conn, conn.transaction():
            for st in statements:
                cur = conn.execute(st, params)
                if cur.description:
                    rows = cur.fetchall()
        return rows

    async def arun(self, *statements: str, params: Any = None) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self.run, *statements, params=params)

    def role(self, prefix: str, attributes: str = "LOGIN") -> str:
        """A new role (dropped with the database); ``attributes`` as in CREATE ROLE."""
        name = unique(prefix)
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {name} {attributes}")
        self.roles.append(name)
        return name

    def drop(self) -> None:
        with psycopg.connect(self.server.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while True:
                slots = [r[0] for r in conn.execute(
                    "SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                    (self.name,)).fetchall()]
                if not slots:
                    break
                conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                             " WHERE database = %s AND active_pid IS NOT NULL", (self.name,))
                for slot in slots:
                    with contextlib.suppress(psycopg.errors.ObjectInUse,
                                             psycopg.errors.UndefinedObject):
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                if time.monotonic() > deadline:
                    raise RuntimeError(f"could not drop the slots of {self.name}: {slots}")
                time.sleep(0.05)
            conn.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
            for role in self.roles:
                conn.execute(f"DROP ROLE IF EXISTS {role}")
