"""Captured tables that change under the bridge: re-created, or out of the publication.

A nightly reload (``DROP TABLE``; ``CREATE TABLE``; ``INSERT ...``) takes the table out
of every publication with the ``DROP``; the new table is in none, so pgoutput never
sends its rows, and nothing says so. ``ALTER PUBLICATION ... DROP TABLE`` does the same
to a live table. Every ``table_check_interval`` the adapter compares each captured
table's OID and its membership of the publication with what capture started from
(:func:`look`, :func:`drift`):

- re-created (a new OID) or out of the publication, with ``on_table_change:
  resnapshot`` and a managed publication (or one ``FOR ALL TABLES``): in one
  transaction the table is put back in the publication and a transactional logical
  message (``cdc-bridge-reset``) naming it is written. The stream, reaching that message
  in commit order, emits one ``t`` event for the table (consumers reset it) and asks for
  a re-snapshot of it: ``r`` events for every row, interleaved with its live changes by
  the usual watermark method. Whatever changed while it was out of the publication is in
  its current rows, so nothing is lost.
- otherwise (``stop``, a publication not ours to change, a table without a primary key,
  which cannot be re-snapshotted live): a ``SourceSetupError`` stops the daemon with the
  reason and the statement that fixes it.
- dropped and not back yet: said once; acted on when it is back.

:func:`drift` is pure; :func:`look` and :func:`restore` are the two round trips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from cdc_bridge.adapters.postgres.config import RESET_PREFIX, PostgresConfig
from cdc_bridge.adapters.postgres.setup import TableInfo, reread_table
from cdc_bridge.kernel.errors import SourceSetupError

log = logging.getLogger("cdc_bridge.adapter.postgres")

Drift = Literal["recreated", "unpublished", "dropped"]


@dataclass(frozen=True, slots=True)
class Seen:
    """A captured table as the catalogue has it now."""

    oid: int | None
    published: bool


def drift_while_away(known: Mapping[str, int], before: Mapping[str, Seen],
                     now: Mapping[str, int]) -> list[tuple[str, Drift]]:
    """At a start with a checkpoint: what changed while no table check was watching.

    ``known``: the checkpoint's OIDs; ``before``: the catalogue before the start put the
    tables (back) in the publication; ``now``: the OIDs capture starts from. A table
    re-created or taken out of the publication meanwhile lost changes the stream will
    never carry, and the start itself would hide it (it re-adds the table)."""
    out: list[tuple[str, Drift]] = []
    for table, oid in sorted(now.items()):
        if table in known and known[table] != oid:
            out.append((table, "recreated"))
        elif table in before and not before[table].published:
            out.append((table, "unpublished"))
    return out


def drift(known: Mapping[str, int], seen: Mapping[str, Seen]) -> list[tuple[str, Drift]]:
    """What changed since capture started, per table (``known``: table -> its OID then)."""
    out: list[tuple[str, Drift]] = []
    for table, oid in sorted(known.items()):
        now = seen.get(table)
        if now is None or now.oid is None:
            out.append((table, "dropped"))
        elif now.oid != oid:
            out.append((table, "recreated"))
        elif not now.published:
            out.append((table, "unpublished"))
    return out


_LOOK = """
SELECT t.key, to_regclass(format('%%I.%%I', t.nsp, t.rel))::oid,
       (p.puballtables OR EXISTS (
            SELECT 1 FROM pg_publication_tables pt
             WHERE pt.pubname = p.pubname
               AND pt.schemaname = t.nsp AND pt.tablename = t.rel))
  FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(key, nsp, rel)
  LEFT JOIN pg_publication p ON p.pubname = %s
"""


async def look(conn: psycopg.AsyncConnection[Any], tables: Mapping[str, TableInfo],
               publication: str) -> dict[str, Seen]:
    """Each table's OID and publication membership now (by schema and name, which may
    hold any character: quoted, never parsed from the qualified name)."""
    keys = sorted(tables)
    cur = await conn.execute(_LOOK, (keys, [tables[k].schema for k in keys],
                                     [tables[k].name for k in keys], publication))
    return {str(key): Seen(int(oid) if oid is not None else None, bool(published))
            for key, oid, published in await cur.fetchall()}


async def restore(conn: psycopg.AsyncConnection[Any], info: TableInfo, publication: str,
                  add: bool) -> None:
    """Put ``info`` back in the publication (``add``) and mark the spot in the WAL.

    First the table is locked (``SHARE``: writers wait, briefly; the owner, which the
    ``ADD`` needs anyway, may; a role without the right skips it), so no transaction
    that wrote to it is still open when both commit. Logical decoding decodes a change
    with the catalogue as of the change, so a transaction that wrote before the
    ``ADD TABLE`` and committed after the mark would have its change neither published
    nor (when the re-snapshot read it before that commit) in an ``r`` row.
    ``lock_timeout`` bounds the wait behind a long transaction: next check, then.
    """
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '5s'")
        try:
            async with conn.transaction():  # (a savepoint: a refusal keeps the rest)
                await conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(
                    info.ident()))
        except psycopg.errors.InsufficientPrivilege:
            if add:  # the ADD needs the owner, who may lock: something else is wrong
                raise
            log.info("no right to lock %s (SHARE): a transaction still open across the "
                     "reset mark may be missing from its re-snapshot", info.qualified)
        if add:
            await conn.execute(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(publication), info.publication_entry()))
        await conn.execute("SELECT pg_logical_emit_message(true, %s, %s)",
                           (RESET_PREFIX, info.qualified))


class TableWatch:
    """The periodic check (module docstring): a task beside the stream, on a connection
    of its own. A change it cannot repair is handed to ``fail`` (the stream raises it)."""

    def __init__(self, name: str, config: PostgresConfig, tables: dict[str, TableInfo],
                 user: str, fail: Callable[[BaseException], None],
                 oids: dict[str, int] | None = None) -> None:
        self.name = name
        self.config = config
        self.tables = tables
        self.user = user
        self.fail = fail
        #: The checkpoint's OIDs (``Position.oids``), kept current after a repair.
        self.oids = oids if oids is not None else {}
        self._dropped: set[str] = set()

    async def run(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        try:
            while True:
                await asyncio.sleep(self.config.table_check_interval)
                try:
                    if conn is None or conn.closed:
                        conn = await psycopg.AsyncConnection.connect(
                            self.config.dsn, autocommit=True,
                            connect_timeout=max(1, int(self.config.connect_timeout)))
                    await self.check(conn)
                except SourceSetupError as e:
                    self.fail(e)
                    return
                except psycopg.Error as e:  # the stream has its own error handling
                    log.debug("%s: table check failed (%s); next time", self.name, e)
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    async def check(self, conn: psycopg.AsyncConnection[Any]) -> None:
        pub = self.config.publication_name()
        known = {name: info.oid for name, info in self.tables.items()}
        seen = await look(conn, self.tables, pub)
        for table, kind in drift(known, seen):
            if kind == "dropped":
                if table not in self._dropped:
                    self._dropped.add(table)
                    log.warning("%s: captured table %s was dropped; its changes resume "
                                "(after a t event and a re-snapshot) when it is back",
                                self.name, table, extra={"table": table})
                continue
            self._dropped.discard(table)
            await self._repair(conn, table, kind, seen[table])

    async def _repair(self, conn: psycopg.AsyncConnection[Any], table: str, kind: Drift,
                      now: Seen) -> None:
        old = self.tables[table]
        what = check_repairable(self.name, self.config, table, kind, now.published, None)
        info = await reread_table(conn, table, old.rules, self.user, old.filter_text,
                                  self.config.publication_mode == "managed")
        if info is None:
            return  # gone again meanwhile: next time
        check_repairable(self.name, self.config, table, kind, now.published, info)
        self.tables[table] = info
        self.oids[table] = info.oid
        await restore(conn, info, self.config.publication_name(), add=not now.published)
        log.warning("%s: table %s %s: it is captured again; a t event and a re-snapshot of "
                    "its rows follow", self.name, table, what, extra={"table": table})


def check_repairable(name: str, cfg: PostgresConfig, table: str, kind: Drift,
                     published: bool, info: TableInfo | None) -> str:
    """How to say what happened to ``table``; :class:`SourceSetupError` (with the fix)
    when it may not or cannot be repaired by a ``t`` and a re-snapshot."""
    pub = cfg.publication_name()
    what = ("was dropped and created again" if kind == "recreated" else
            f"was taken out of publication {pub}")
    fix = (f"run ALTER PUBLICATION {pub} ADD TABLE {table}; then "
           f"cdc-bridge snapshot -c CONFIG {name} {table}" if not published
           else f"run cdc-bridge snapshot -c CONFIG {name} {table}")
    if cfg.on_table_change == "stop":
        raise SourceSetupError(f"table {table} {what}, so its changes since then are not "
                               f"captured (on_table_change: stop): {fix}")
    if not published and cfg.publication_mode == "existing":
        raise SourceSetupError(f"table {table} {what} and publication {pub} is not ours "
                               f"to change (publication_mode: existing): {fix}")
    if info is not None and not info.primary_key:
        raise SourceSetupError(f"table {table} {what}, and it has no primary key, so it "
                               f"cannot be re-snapshotted while capture goes on: {fix}")
    return what
