"""Source-side checks and set-up for ``type: postgres``, on an ordinary SQL connection.

Everything a person must fix is reported as :class:`cdc_bridge.kernel.errors.SourceSetupError`
with the exact statement that fixes it: ``wal_level`` not ``logical``, a role without
the REPLICATION attribute, a missing SELECT privilege, a table that is missing or would
break the application's UPDATEs once published (no primary key and REPLICA IDENTITY
DEFAULT), a publication we may not create, a slot of the wrong plugin or database.

Configured names are resolved against the catalogue once (``schema.*`` expands to the
schema's tables, ``exclude_tables`` removes some) into :class:`TableInfo` records that
the snapshot and the stream share: primary key, columns with type OIDs, row estimate
and column rules. Outbox tables (``outbox_tables``) are resolved apart, checked for the
columns :mod:`cdc_bridge.adapters.postgres.outbox` reads, never captured as row changes (not even
through a ``schema.*``), and published like the captured tables. Identifiers only ever
reach SQL through :mod:`psycopg.sql`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from cdc_bridge.adapters.filters import RowFilter, row_filter
from cdc_bridge.adapters.filters.sql import to_postgres_sql
from cdc_bridge.adapters.postgres.config import PgTable, PostgresConfig, split_name
from cdc_bridge.adapters.postgres.outbox import OUTBOX_COLUMNS
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.errors import SourceSetupError

log = logging.getLogger("cdc_bridge.adapter.postgres")


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type_oid: int
    type_modifier: int
    #: ``pg_attribute.attnotnull`` (``None``: not looked up).
    not_null: bool | None = None


@dataclass(slots=True)
class TableInfo:
    oid: int
    schema: str
    name: str
    columns: list[ColumnInfo]
    primary_key: list[str]
    replica_identity: str
    estimated_rows: int
    rules: ColumnRules | None = None
    #: A partitioned parent: its partitions' changes must be published under its name.
    partitioned: bool = False
    #: The table's ``filter`` (docs/filters.md), and whether the publication applies it
    #: (managed publication, PostgreSQL 15+, a filter that does not read ``op``).
    filter_text: str | None = None
    filter_pushed: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def row_filter(self) -> RowFilter | None:
        return row_filter(self.filter_text) if self.filter_text else None

    @property
    def bridge_filter(self) -> RowFilter | None:
        """The filter the bridge evaluates on streamed changes (not pushed down)."""
        return None if self.filter_pushed else self.row_filter

    def sql_filter(self) -> str | None:
        """The filter as a PostgreSQL condition (``None``: none, or it reads ``op``)."""
        rf = self.row_filter
        return None if rf is None or rf.uses_op else to_postgres_sql(rf.expr)

    def publication_entry(self) -> sql.Composable:
        """The table as listed in CREATE/ALTER PUBLICATION, with its row filter."""
        where = self.sql_filter() if self.filter_pushed else None
        if where is None:
            return self.ident()
        return sql.SQL("{} WHERE ({})").format(self.ident(), sql.SQL(where))

    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True, slots=True)
class SlotInfo:
    plugin: str | None
    database: str | None
    confirmed_flush_lsn: str | None
    active: bool
    wal_status: str | None


@dataclass(slots=True)
class SourceInfo:
    tables: list[TableInfo]
    user: str
    database: str
    actions: list[str] = field(default_factory=list)
    #: The ``outbox_tables``, relayed as routed messages (not captured as rows).
    outbox: list[TableInfo] = field(default_factory=list)

    def by_name(self) -> dict[str, TableInfo]:
        return {t.qualified: t for t in self.tables}


#: pgoutput sends logical decoding messages (``messages 'true'``) from PostgreSQL 14 on.
MIN_SERVER_VERSION = 140000


async def check_server(conn: psycopg.AsyncConnection[tuple[Any, ...]]) -> tuple[str, str]:
    """Version, wal_level and the role's REPLICATION attribute; returns (user, database)."""
    version = conn.info.server_version
    if version < MIN_SERVER_VERSION:
        raise SourceSetupError(
            f"PostgreSQL {version // 10000} is too old for the postgres source: it needs "
            f"{MIN_SERVER_VERSION // 10000} or later (pgoutput's logical messages carry its "
            "heartbeats and re-snapshot marks); poll this database with type: sql_poll")
    cur = await conn.execute("SELECT current_setting('wal_level'), current_user, "
                             "current_database(), r.rolreplication, r.rolsuper "
                             "FROM pg_roles r WHERE r.rolname = current_user")
    row = await cur.fetchone()
    assert row is not None
    wal_level, user, database, can_replicate, is_super = row
    if wal_level != "logical":
        raise SourceSetupError(
            f"wal_level is '{wal_level}' on the source server, logical replication needs "
            "'logical': run ALTER SYSTEM SET wal_level = logical; as a superuser, then "
            "restart PostgreSQL")
    if not (can_replicate or is_super):
        raise SourceSetupError(
            f"role '{user}' lacks the REPLICATION attribute needed for a replication "
            f"connection: run ALTER ROLE \"{user}\" REPLICATION; as a superuser")
    return str(user), str(database)


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relreplident,
       CASE WHEN c.relkind = 'p' THEN (SELECT COALESCE(sum(GREATEST(p.reltuples, 0)), 0)
                                         FROM pg_partition_tree(c.oid) t
                                         JOIN pg_class p ON p.oid = t.relid
                                        WHERE t.isleaf)
            ELSE c.reltuples END::bigint,
       has_table_privilege(c.oid, 'SELECT'), pg_has_role(c.relowner, 'USAGE'),
       (SELECT array_agg(a.attname ORDER BY array_position(i.indkey, a.attnum))
          FROM pg_index i JOIN pg_attribute a
            ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = c.oid AND i.indisprimary),
       c.relkind = 'p'
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname = %s AND (%s OR c.relname = %s)
 ORDER BY n.nspname, c.relname
"""

_COLUMNS_SQL = """
SELECT attname, atttypid, atttypmod, attnotnull FROM pg_attribute
 WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
 ORDER BY attnum
"""


async def table_columns(conn: psycopg.AsyncConnection[Any], oid: int) -> list[ColumnInfo]:
    """The columns of table ``oid`` as the catalogue (in the connection's snapshot) has
    them, in order: what the snapshot reads and the stream's tuples hold."""
    cur = await conn.execute(_COLUMNS_SQL, (oid,))
    return [ColumnInfo(str(n), int(t), int(m), bool(nn)) for n, t, m, nn in await cur.fetchall()]


async def resolve_tables(conn: psycopg.AsyncConnection[tuple[Any, ...]],
                         config: PostgresConfig, user: str) -> list[TableInfo]:
    excluded = {".".join(split_name(n)) for n in config.exclude_tables}
    excluded.update(config.outbox_names())
    found: dict[str, TableInfo] = {}
    for spec in config.table_specs():
        schema, name = split_name(spec.name)
        wildcard = name == "*"
        cur = await conn.execute(_TABLES_SQL, (schema, wildcard, name))
        rows = await cur.fetchall()
        if not rows and not wildcard:
            raise SourceSetupError(f"table {schema}.{name} (tables: {spec.name}) not found "
                                   "in the source database")
        for row in rows:
            info = await _table_info(conn, row, spec, user,
                                     managed=config.publication_mode == "managed")
            if info.qualified not in excluded:
                found.setdefault(info.qualified, info)
    if not found and not config.outbox_tables:
        raise SourceSetupError("no table to capture: the configured tables and exclude_tables "
                               "leave nothing")
    return list(found.values())


async def resolve_outbox_tables(conn: psycopg.AsyncConnection[tuple[Any, ...]],
                                config: PostgresConfig, user: str) -> list[TableInfo]:
    """The ``outbox_tables``: they must exist and have the outbox columns."""
    out: list[TableInfo] = []
    for qualified in config.outbox_names():
        schema, name = split_name(qualified)
        cur = await conn.execute(_TABLES_SQL, (schema, False, name))
        row = await cur.fetchone()
        if row is None:
            raise SourceSetupError(
                f"outbox table {qualified} (outbox_tables) not found in the source database: "
                "create it with cdc_bridge.client.outbox.create_outbox_table "
                "(see docs/sources/outbox_table.md)")
        info = await _table_info(conn, row, PgTable(name=qualified), user)
        missing = [c for c in OUTBOX_COLUMNS if c not in {col.name for col in info.columns}]
        if missing:
            raise SourceSetupError(
                f"outbox table {qualified} lacks the column(s) {', '.join(missing)}: an outbox "
                "table needs the columns of cdc_bridge.client.outbox's DDL "
                "(id, aggregate_type, aggregate_id, "
                "event_type, payload, created_at; headers and published_at optional)")
        out.append(info)
    return out


async def reread_table(conn: psycopg.AsyncConnection[Any], qualified: str,
                       rules: ColumnRules | None, user: str, filter_text: str | None = None,
                       managed: bool = True) -> TableInfo | None:
    """The catalogue's view of one captured table now (``None``: it does not exist)."""
    schema, name = split_name(qualified)
    cur = await conn.execute(_TABLES_SQL, (schema, False, name))
    row = await cur.fetchone()
    if row is None:
        return None
    return await _table_info(conn, row,
                             PgTable(name=qualified, columns=rules, filter=filter_text), user,
                             managed=managed)


#: Publication row filters (``FOR TABLE t WHERE (...)``) exist from PostgreSQL 15 on.
ROW_FILTER_VERSION = 150000

_IDENTITY_INDEX_SQL = """
SELECT a.attname FROM pg_index i JOIN pg_attribute a
  ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
 WHERE i.indrelid = %s AND i.indisreplident
"""


async def _plan_filter(conn: psycopg.AsyncConnection[tuple[Any, ...]], info: TableInfo,
                       managed: bool) -> None:
    """Check the table's filter against its columns; push it into the publication when
    the publication is ours, the server has row filters and the filter reads no ``op``."""
    rf = info.row_filter
    if rf is None:
        return
    unknown = rf.unknown_columns({c.name for c in info.columns})
    if unknown:
        raise SourceSetupError(f"the filter of {info.qualified} reads "
                               f"{', '.join(map(repr, unknown))}, which the table does not "
                               f"have (filter: {info.filter_text})")
    if rf.uses_op or not managed or conn.info.server_version < ROW_FILTER_VERSION:
        return
    if info.replica_identity == "f":
        covered: set[str] = {c.name for c in info.columns}
    elif info.replica_identity == "i":
        cur = await conn.execute(_IDENTITY_INDEX_SQL, (info.oid,))
        covered = {str(r[0]) for r in await cur.fetchall()}
    elif info.replica_identity == "d":
        covered = set(info.primary_key)
    else:
        covered = set()
    outside = sorted(rf.columns - covered)
    if outside:
        raise SourceSetupError(
            f"the filter of {info.qualified} reads {', '.join(outside)}, which its replica "
            "identity does not cover: PostgreSQL would then refuse UPDATE and DELETE on the "
            f"table once the filter is in the publication. Run ALTER TABLE {info.qualified} "
            "REPLICA IDENTITY FULL; (or filter on key columns only)")
    info.filter_pushed = True


async def _table_info(conn: psycopg.AsyncConnection[tuple[Any, ...]],
                      row: tuple[Any, ...], spec: PgTable, user: str,
                      managed: bool = True) -> TableInfo:
    oid, schema, name, ident, estimate, can_select, _owner, pk, partitioned = row
    qualified = f"{schema}.{name}"
    if not can_select:
        raise SourceSetupError(
            f"role '{user}' has no SELECT privilege on {qualified} (needed for the snapshot): "
            f"run GRANT SELECT ON {qualified} TO \"{user}\";")
    if not pk and ident in ("d", "n"):
        raise SourceSetupError(
            f"table {qualified} has no primary key and REPLICA IDENTITY "
            f"{'DEFAULT' if ident == 'd' else 'NOTHING'}: once published, UPDATE and DELETE "
            f"on it would fail in the application. Run ALTER TABLE {qualified} REPLICA "
            "IDENTITY FULL; (or add a primary key)")
    if partitioned and not pk:
        raise SourceSetupError(
            f"partitioned table {qualified} has no primary key: the snapshot pages tables "
            "without a key by ctid, which is not unique across partitions. Add a primary key "
            "(it must include the partition key), or list the partitions in tables instead")
    columns = await table_columns(conn, int(oid))
    info = TableInfo(int(oid), str(schema), str(name), columns, list(pk or []), str(ident),
                     max(int(estimate), 0), spec.columns, bool(partitioned), spec.filter)
    await _plan_filter(conn, info, managed)
    return info


async def ensure_publication(conn: psycopg.AsyncConnection[tuple[Any, ...]],
                             config: PostgresConfig, tables: list[TableInfo],
                             user: str) -> list[str]:
    """Create or sync the publication (managed) or check it (existing); returns actions."""
    pub = config.publication_name()
    cur = await conn.execute("SELECT puballtables, pubinsert, pubviaroot FROM pg_publication "
                             "WHERE pubname = %s", (pub,))
    row = await cur.fetchone()
    parted = sorted(t.qualified for t in tables if t.partitioned)
    if parted and conn.info.server_version < 130000:
        raise SourceSetupError(
            f"{', '.join(parted)} is partitioned: PostgreSQL {conn.info.server_version // 10000} "
            "cannot publish a partitioned table under its own name (13 and later can, with "
            "publish_via_partition_root); list its partitions in tables instead")
    actions = []
    if row is not None and parted and not row[2]:
        if config.publication_mode == "existing":
            raise SourceSetupError(
                f"publication {pub} publishes the partitions of {', '.join(parted)} under "
                "their own names, which are not the configured tables: run ALTER PUBLICATION "
                f"{pub} SET (publish_via_partition_root = true);")
        await _check_owner(conn, tables, user, pub)
        await conn.execute(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = "
                                   "true)").format(sql.Identifier(pub)))
        actions.append(f"publication {pub}: publish_via_partition_root set, so the "
                       f"partitions of {', '.join(parted)} publish under its name")
    if row is not None and config.outbox_tables and not row[1]:
        raise SourceSetupError(
            f"publication {pub} does not publish inserts, which outbox_tables are made of: "
            f"run ALTER PUBLICATION {pub} SET (publish = 'insert, update, delete, truncate');")
    wanted = {t.qualified for t in tables}
    if row is None:
        if config.publication_mode == "existing":
            raise SourceSetupError(
                f"publication {pub} does not exist (publication_mode: existing): create it "
                "with CREATE PUBLICATION ... FOR TABLE ..., or set publication_mode: managed")
        await _check_owner(conn, tables, user, pub)
        via_root = sql.SQL(" WITH (publish_via_partition_root = true)" if parted else "")
        await conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}{}").format(
            sql.Identifier(pub), sql.SQL(", ").join(t.publication_entry() for t in tables),
            via_root))
        return [f"created publication {pub} for {len(tables)} table(s): {', '.join(wanted)}"]
    if row[0]:
        return [*actions, f"publication {pub} exists (FOR ALL TABLES), used as is"]
    have_filters = await _row_filters(conn, pub)
    have = set(have_filters)
    refilter = config.publication_mode == "managed" and (
        any(t.filter_pushed for t in tables) or any(have_filters.values()))
    if have >= wanted and (have == wanted or config.publication_mode == "existing") \
            and not refilter:
        return [*actions, f"publication {pub} exists and covers the configured tables"]
    if config.publication_mode == "existing":
        missing = ", ".join(sorted(wanted - have))
        raise SourceSetupError(
            f"publication {pub} does not include {missing} (publication_mode: existing): "
            f"run ALTER PUBLICATION {pub} ADD TABLE {missing};")
    await _check_owner(conn, tables, user, pub)
    return [*actions, *await _set_tables(conn, pub, tables, have_filters, refilter)]


async def _set_tables(conn: psycopg.AsyncConnection[tuple[Any, ...]], pub: str,
                      tables: list[TableInfo], have_filters: dict[str, str | None],
                      refilter: bool) -> list[str]:
    """``ALTER PUBLICATION ... SET TABLE`` with the row filters; what it changed."""
    wanted = {t.qualified for t in tables}
    have = set(have_filters)
    actions: list[str] = []
    try:
        await conn.execute(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(
            sql.Identifier(pub), sql.SQL(", ").join(t.publication_entry() for t in tables)))
    except psycopg.errors.DatabaseError as e:
        if not refilter:
            raise
        raise SourceSetupError(f"publication {pub}: PostgreSQL refused the row filters "
                               f"({str(e).strip().splitlines()[0]}); check each table's "
                               "filter against its column types") from None
    if have != wanted:
        actions.append(f"publication {pub}: table list set to {', '.join(sorted(wanted))} "
                       f"(was {', '.join(sorted(have)) or 'empty'})")
    now_filters = await _row_filters(conn, pub)
    changed = sorted(t for t in wanted if now_filters.get(t) != have_filters.get(t))
    if changed:
        actions.append(f"publication {pub}: row filters set on {', '.join(changed)}")
    return actions or [f"publication {pub} exists and covers the configured tables"]


async def _row_filters(conn: psycopg.AsyncConnection[tuple[Any, ...]],
                       pub: str) -> dict[str, str | None]:
    """The publication's tables and their row filters (as the server prints them)."""
    rowfilter = "rowfilter" if conn.info.server_version >= ROW_FILTER_VERSION else "NULL"
    cur = await conn.execute(f"SELECT schemaname || '.' || tablename, {rowfilter} "
                             "FROM pg_publication_tables WHERE pubname = %s", (pub,))
    return {str(r[0]): None if r[1] is None else str(r[1]) for r in await cur.fetchall()}


async def _check_owner(conn: psycopg.AsyncConnection[tuple[Any, ...]],
                       tables: list[TableInfo], user: str, pub: str) -> None:
    cur = await conn.execute(
        "SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = ANY(%s) "
        "AND NOT pg_has_role(c.relowner, 'USAGE')", ([t.oid for t in tables],))
    not_owned = [str(r[0]) for r in await cur.fetchall()]
    cur = await conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')")
    row = await cur.fetchone()
    if not_owned or not (row and row[0]):
        what = (f"must own {', '.join(not_owned)}" if not_owned
                else "needs the CREATE privilege on the database")
        raise SourceSetupError(
            f"role '{user}' {what} to manage publication {pub}: have the table owner run "
            f"CREATE PUBLICATION {pub} FOR TABLE ...; and set publication_mode: existing")


async def slot_info(conn: psycopg.AsyncConnection[tuple[Any, ...]],
                    slot: str) -> SlotInfo | None:
    cur = await conn.execute(
        "SELECT plugin, database, confirmed_flush_lsn::text, active, wal_status "
        "FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    row = await cur.fetchone()
    if row is None:
        return None
    info = SlotInfo(*(None if v is None else (v if isinstance(v, bool) else str(v))
                      for v in row))  # type: ignore[arg-type]
    return info


def check_slot(info: SlotInfo, slot: str, database: str) -> None:
    if info.plugin != "pgoutput":
        raise SourceSetupError(f"replication slot {slot} uses plugin {info.plugin}, not "
                               "pgoutput: drop it or configure another slot name")
    if info.database != database:
        raise SourceSetupError(f"replication slot {slot} belongs to database {info.database}, "
                               f"not {database}: configure another slot name")
    if info.wal_status == "lost":
        raise SourceSetupError(
            f"replication slot {slot} was invalidated (wal_status lost: the server removed "
            "WAL it needed, max_slot_wal_keep_size). Changes were lost: run "
            f"SELECT pg_drop_replication_slot('{slot}'); and restart with snapshot: "
            "when_needed to re-snapshot")
