"""Idle heartbeats: keep the replication slot moving when the captured tables are quiet.

A slot is only confirmed up to WAL the walsender has decoded for us. When the captured
tables are idle while the rest of the database writes, the walsender may have nothing
to send and the slot's ``restart_lsn`` stays behind, so the server keeps WAL (Debezium's
"WAL bloat on idle databases"). Every ``heartbeat_interval`` of silence on the stream,
:func:`run_heartbeat` writes a tiny non-transactional logical message
(``pg_logical_emit_message(false, 'cdc-bridge-heartbeat', '')``) on an ordinary
connection. The stream sees it (and the keepalive after it), has nothing pending, and
confirms that LSN (see :mod:`cdc_bridge.adapters.postgres.stream`); the message itself never becomes
an event.

Heartbeat failures are logged, never fatal: the stream is what matters and has its own
error handling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from cdc_bridge.adapters.postgres.config import HEARTBEAT_PREFIX

log = logging.getLogger("cdc_bridge.adapter.postgres")


async def run_heartbeat(name: str, dsn: str, interval_s: float,
                        idle_s: Callable[[], float]) -> None:
    conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
    warned = False
    try:
        while True:
            await asyncio.sleep(max(0.05, interval_s - idle_s()))
            if idle_s() < interval_s:
                continue
            try:
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
                await conn.execute("SELECT pg_logical_emit_message(false, %s, '')",
                                   (HEARTBEAT_PREFIX,))
                warned = False
            except psycopg.Error as e:
                if not warned:
                    log.warning("%s: heartbeat failed (%s); will retry", name,
                                type(e).__name__)
                    warned = True
                if conn is not None:
                    await conn.close()
                conn = None
                await asyncio.sleep(interval_s)
    finally:
        if conn is not None:
            await conn.close()
