"""Which outbox a replication slot belongs to: a mark on the managed publication.

A slot's position and the outbox's checkpoint must belong together: the outbox holds
what was captured up to its checkpoint, the slot holds what comes after. An outbox that
lost its memory (a file truncated, a fresh state_dir, a backup restored from another
deployment) beside a slot that was already consumed would silently re-send everything as
a new snapshot, or skip what the slot is past. So once its first checkpoint is
committed, the adapter marks its publication (``COMMENT ON PUBLICATION``, managed mode
only) with the slot name and the outbox's store id, and on start it compares that mark
with the outbox it runs on: a different store refuses to start, with the command that
accepts a reset (``cdc-bridge reset-source``). The mark is plain text any DBA can read.
:func:`check` is pure; the two statements are below it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc_bridge.kernel.errors import SourceSetupError

_MARK = re.compile(r"cdc-bridge: slot (?P<slot>\S+) belongs to outbox (?P<store>[0-9a-f-]+)")


@dataclass(frozen=True, slots=True)
class Owner:
    slot: str
    store: str


def parse(comment: str | None) -> Owner | None:
    match = _MARK.search(comment or "")
    return Owner(match["slot"], match["store"]) if match else None


def mark(slot: str, store: str) -> str:
    return f"cdc-bridge: slot {slot} belongs to outbox {store}"


def check(owner: Owner | None, slot: str, store: str, adapter: str,
          has_checkpoint: bool) -> None:
    """Raise :class:`SourceSetupError` when ``slot`` was last claimed by another outbox."""
    if owner is None or owner.slot != slot or owner.store == store:
        return
    what = ("holds no checkpoint for it, so starting would send every row again as a new "
            "snapshot" if not has_checkpoint else
            "holds a checkpoint that the slot may be past, so changes could be skipped")
    raise SourceSetupError(
        f"replication slot {slot} belongs to outbox {owner.store}, but this outbox is {store} "
        f"and {what}: the outbox was reset, replaced or restored from elsewhere. If that is "
        f"meant, run `cdc-bridge reset-source -c CONFIG {adapter}` (drops the slot and this "
        "outbox's checkpoint; the next start takes a new snapshot)")


async def read_owner(conn: psycopg.AsyncConnection[Any], publication: str) -> Owner | None:
    cur = await conn.execute("SELECT obj_description(oid, 'pg_publication') "
                             "FROM pg_publication WHERE pubname = %s", (publication,))
    row = await cur.fetchone()
    return parse(row[0]) if row else None


async def claim(conn: psycopg.AsyncConnection[Any], publication: str, slot: str,
                store: str | None) -> None:
    """Write (``store``) or clear (``None``) the mark on ``publication``."""
    text = sql.Literal(mark(slot, store)) if store else sql.SQL("NULL")
    await conn.execute(sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
        sql.Identifier(publication), text))
