"""The snapshot half of ``mysql_binlog``: existing rows as ``op: r`` events, chunk by chunk.

Consistency with the stream without a global lock held for the copy. MariaDB: one
transaction ``START TRANSACTION WITH CONSISTENT SNAPSHOT`` and the status variables
``binlog_snapshot_file`` / ``binlog_snapshot_position``, the binlog position exactly
matching that snapshot (no lock at all). MySQL: ``FLUSH TABLES WITH READ LOCK`` only
for as long as it takes to open the transaction and read ``SHOW MASTER STATUS``.
Streaming starts at that position once the copy is done, so no change is missed or
doubled, and per key an ``r`` row precedes every later change.

Chunks: keyset pagination on the primary key (``WHERE (pk) > (last) ORDER BY pk LIMIT
n``; ``LIMIT/OFFSET`` in the one transaction for tables without a key). Each chunk is one
outbox batch whose checkpoint records the last key copied, so a crash loses at most the
chunk in flight; the resume reads the rest under a new snapshot with a filter on the
stream (:mod:`.position`). These functions block: the adapter runs them in a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cdc_bridge.adapters.mysql_binlog.position import BinlogPos, Position, SnapshotFilter
from cdc_bridge.adapters.mysql_binlog.setup import Conn, TableMeta, quote


def open_snapshot(conn: Conn) -> BinlogPos:
    """Open the copy transaction; return the binlog position it matches exactly."""
    with conn.cursor() as cur:
        cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if "mariadb" in conn.get_server_info().lower():
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
            status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
            return BinlogPos(status["binlog_snapshot_file"],
                             int(status["binlog_snapshot_position"]))
        cur.execute("FLUSH TABLES WITH READ LOCK")
        try:
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
        finally:
            cur.execute("UNLOCK TABLES")
        assert row is not None
        return BinlogPos(str(row[0]), int(row[1]))


def resume_filter(pos: Position, at: BinlogPos, tables: dict[str, TableMeta]) -> None:
    """A resumed copy reads the rest under a snapshot at ``at``: record what it covers."""
    progress = pos.snapshot
    assert progress is not None
    new = SnapshotFilter(at)
    for name in progress.remaining():
        new.ranges[name] = None
    current = progress.current
    if current is not None and current in tables:
        meta = tables[current]
        if progress.after is not None and meta.orderable_key:
            new.ranges[current] = progress.after
        else:
            progress.after = None  # copy the table again from its start
    whole = {t for t, bound in new.ranges.items() if bound is None}
    for old in pos.filters:
        for t in whole:
            old.ranges.pop(t, None)
    pos.filters = [f for f in pos.filters if f.ranges]
    pos.filters.append(new)
    progress.attempt += 1


#: A condition with ``%s`` placeholders and their values (a partial backfill's where).
Condition = tuple[str, Sequence[Any]]


def read_chunk(conn: Conn, meta: TableMeta, after: Sequence[Any] | None,
               limit: int, only: Condition | None = None) -> list[tuple[Any, ...]]:
    """The next rows of ``meta`` after key ``after`` (``["#offset", n]`` when keyless),
    of those matching ``only`` when given (keyed tables)."""
    cols = ", ".join(quote(c.name) for c in meta.columns)
    table = f"{quote(meta.schema)}.{quote(meta.table)}"
    params: list[Any] = []
    if meta.key:
        order = ", ".join(quote(k) for k in meta.key)
        conds = []
        if after is not None:
            conds.append(f"({order}) > ({', '.join(['%s'] * len(after))})")
            params = list(after)
        if only is not None:
            conds.append(f"({only[0]})")
            params.extend(only[1])
        where = f" WHERE {' AND '.join(conds)}" if conds else ""
        query = f"SELECT {cols} FROM {table}{where} ORDER BY {order} LIMIT {int(limit)}"
    else:
        offset = int(after[1]) if after is not None else 0
        query = f"SELECT {cols} FROM {table} LIMIT {int(limit)} OFFSET {offset}"
    with conn.cursor() as cur:
        cur.execute(query, params if (params or only is not None) else None)
        return list(cur.fetchall())


def count_matching(conn: Conn, meta: TableMeta, only: Condition) -> int:
    """Rows of ``meta`` matching ``only`` (a partial backfill's total)."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {quote(meta.schema)}.{quote(meta.table)} "
                    f"WHERE {only[0]}", list(only[1]))
        row = cur.fetchone()
    return int(row[0]) if row else 0


def commit(conn: Conn) -> None:
    with conn.cursor() as cur:
        cur.execute("COMMIT")
