"""Server checks and table metadata for ``mysql_binlog``, over PyMySQL (blocking; the
adapter calls these in a worker thread).

Each problem a person must fix is a :class:`~cdc_bridge.kernel.errors.SourceSetupError`
carrying the statement that fixes it: the binary log off, ``binlog_format`` not ``ROW``,
``binlog_row_image`` not ``FULL``, ``binlog_row_metadata`` not ``FULL`` (without it the
log carries no column names, signedness or ``ENUM``/``SET`` labels), a missing
``REPLICATION SLAVE``, ``REPLICATION CLIENT`` or ``SELECT``, a ``server_id`` equal to the
server's or to another registered replica's, a checkpoint whose binlog was purged. A
server that cannot be reached is :class:`~cdc_bridge.kernel.errors.SourceUnavailable`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pymysql

from cdc_bridge.adapters.mysql_binlog.changes import TableFilter
from cdc_bridge.adapters.mysql_binlog.config import MysqlBinlogConfig
from cdc_bridge.adapters.mysql_binlog.position import BinlogPos
from cdc_bridge.adapters.mysql_binlog.shapes import ColumnFacts, facts_from_catalogue
from cdc_bridge.adapters.mysql_binlog.values import ColumnSpec, spec_from_sql
from cdc_bridge.kernel.errors import SourceSetupError, SourceUnavailable

#: A PyMySQL connection (the driver ships no type information).
Conn: TypeAlias = Any

#: Errors of PyMySQL that mean "cannot reach the server now".
UNREACHABLE = (2002, 2003, 2005, 2006, 2013, 2055, 1053)
#: Errors that mean "the credentials are refused".
DENIED = (1044, 1045, 1698)


def connect(config: MysqlBinlogConfig, **extra: Any) -> Conn:
    """An autocommit connection (session time zone UTC), or the right error."""
    ep = config.endpoint()
    try:
        conn: Conn = pymysql.connect(**ep.pymysql(config.connect_timeout), autocommit=True,
                               **extra)
    except pymysql.err.OperationalError as e:
        raise connection_error(config.name, e) from None
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
    return conn


def connection_error(name: str, e: BaseException) -> Exception:
    code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
    text = e.args[1] if len(e.args) > 1 else str(e)
    if code in DENIED:
        return SourceSetupError(f"{name}: the server refused the login: {text}")
    return SourceUnavailable(f"{name}: cannot reach the server: {text}")


def _variables(cur: Any, names: Sequence[str]) -> dict[str, str]:
    cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ("
                + ", ".join(["%s"] * len(names)) + ")", list(names))
    return {str(k).lower(): str(v) for k, v in cur.fetchall()}


_FIX = "SET GLOBAL {} = '{}' (and {}={} in the server's config file, for restarts)"


def check_server(conn: Conn, config: MysqlBinlogConfig) -> list[str]:
    """Every problem found, one line each with its fix (empty: capture can work)."""
    problems: list[str] = []
    with conn.cursor() as cur:
        v = _variables(cur, ["log_bin", "binlog_format", "binlog_row_image",
                             "binlog_row_metadata", "server_id"])
        if v.get("log_bin", "OFF").upper() != "ON":
            problems.append("the binary log is off: start the server with "
                            "--log-bin=<path> --binlog-format=ROW --binlog-row-image=FULL "
                            "--binlog-row-metadata=FULL --server-id=<n>")
        for var, want in (("binlog_format", "ROW"), ("binlog_row_image", "FULL"),
                          ("binlog_row_metadata", "FULL")):
            if var in v and v[var].upper() != want:
                problems.append(f"{var} is {v[var]}, capture needs {want}: "
                                + _FIX.format(var, want, var.replace("_", "-"), want))
        if "binlog_row_metadata" not in v:
            problems.append("the server has no binlog_row_metadata (MariaDB >= 10.5 or "
                            "MySQL >= 8.0.1 needed)")
        ours = config.replica_id()
        if v.get("server_id") == str(ours):
            problems.append(f"server_id {ours} of this reader is the server's own: set "
                            "server_id in the adapter to another number")
        problems += _grants(cur, config)
        problems += _replicas(cur, ours)
    return problems


def _grants(cur: Any, config: MysqlBinlogConfig) -> list[str]:
    cur.execute("SHOW GRANTS FOR CURRENT_USER()")
    grants = " ".join(str(r[0]) for r in cur.fetchall()).upper()
    ep = config.endpoint()
    who = f"'{ep.user}'@'%'"
    out = []
    global_all = re.search(r"GRANT ALL PRIVILEGES ON \*\.\*", grants) is not None
    for priv, alias in (("REPLICATION SLAVE", "REPLICATION REPLICA"),
                        ("REPLICATION CLIENT", "BINLOG MONITOR")):
        if not global_all and priv not in grants and alias not in grants:
            out.append(f"the user lacks {priv}: GRANT {priv} ON *.* TO {who}")
    return out


def _replicas(cur: Any, ours: int) -> list[str]:
    try:
        cur.execute("SHOW SLAVE HOSTS")
    except pymysql.err.MySQLError:
        return []  # not allowed to look: the dump itself will tell
    for row in cur.fetchall():
        if str(row[0]) == str(ours):
            return [f"server_id {ours} is already used by a replica of this server "
                    f"({row[1] or 'unnamed'}): set server_id in the adapter to another number"]
    return []


@dataclass(slots=True)
class TableMeta:
    schema: str
    table: str
    columns: list[ColumnSpec]
    key: list[str]
    estimated_rows: int = 0
    #: The key orders alike in Python and in the server (integers): resumable by range.
    orderable_key: bool = False
    #: The columns as :mod:`.shapes` describes them (the table's shape is made of these).
    facts: list[ColumnFacts] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


def resolve_tables(conn: Conn, tables: TableFilter) -> list[TableMeta]:
    """The captured tables that exist, with columns and primary key; SELECT checked."""
    with conn.cursor() as cur:
        cur.execute("SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES"
                    " WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA IN ("
                    + ", ".join(["%s"] * len(tables.schemas())) + ") ORDER BY 1, 2",
                    tables.schemas())
        found = [(str(s), str(t), int(n or 0)) for s, t, n in cur.fetchall()
                 if tables.captured(str(s), str(t))]
    present = {f"{s}.{t}" for s, t, _n in found}
    for name in tables.patterns:
        if "*" not in name and name not in present and name not in tables.exclude:
            schema = name.split(".", 1)[0]
            raise SourceSetupError(
                f"no SELECT privilege on {name}, or no such table: GRANT SELECT ON "
                f"{quote(schema)}.* TO <user> (capture reads it), or create the table")
    out = []
    for schema, table, rows in found:
        meta = table_meta(conn, schema, table)
        meta.estimated_rows = rows
        out.append(meta)
    return out


def table_meta(conn: Conn, schema: str, table: str) -> TableMeta:
    with conn.cursor() as cur:
        cur.execute("SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COLUMN_KEY, IS_NULLABLE, "
                    "CHARACTER_OCTET_LENGTH, NUMERIC_PRECISION, NUMERIC_SCALE, "
                    "DATETIME_PRECISION, COLLATION_NAME FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                    (schema, table))
        cols = cur.fetchall()
        json_cols = json_columns(cur, schema, table)
        cur.execute("SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE "
                    "TABLE_SCHEMA = %s AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' "
                    "ORDER BY ORDINAL_POSITION", (schema, table))
        key = [str(r[0]) for r in cur.fetchall()]
        try:
            cur.execute(f"SELECT 1 FROM {quote(schema)}.{quote(table)} LIMIT 0")
        except pymysql.err.OperationalError as e:
            if e.args and e.args[0] in (1142, 1143):
                raise SourceSetupError(
                    f"no SELECT privilege on {schema}.{table}: GRANT SELECT ON "
                    f"{quote(schema)}.* TO <user> (the snapshot reads it)") from None
            raise
    specs = [spec_from_sql(str(c[0]), str(c[1]), str(c[2]), str(c[0]) in json_cols)
             for c in cols]
    types = {str(c[0]): str(c[1]).lower() for c in cols}
    orderable = bool(key) and all(types.get(k) in _INTEGERS for k in key)
    facts = [facts_from_catalogue(str(n), str(dt), str(ct), str(nullable), _int(octets),
                                  _int(precision), _int(scale), _int(fsp),
                                  None if coll is None else str(coll), str(n) in json_cols)
             for n, dt, ct, _k, nullable, octets, precision, scale, fsp, coll in cols]
    return TableMeta(schema, table, specs, key, orderable_key=orderable, facts=facts)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


_INTEGERS = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint"})


def json_columns(cur: Any, schema: str, table: str) -> set[str]:
    """MariaDB's ``JSON`` columns (text with a ``json_valid`` check)."""
    try:
        cur.execute("SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS WHERE "
                    "CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s", (schema, table))
    except pymysql.err.MySQLError:
        return set()
    out = set()
    for (clause,) in cur.fetchall():
        m = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", str(clause))
        if m:
            out.add(m.group(1).replace("``", "`"))
    return out


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def binlog_files(conn: Conn) -> list[tuple[str, int]]:
    """``SHOW BINARY LOGS``: every file the server still has, with its size."""
    with conn.cursor() as cur:
        cur.execute("SHOW BINARY LOGS")
        return [(str(r[0]), int(r[1])) for r in cur.fetchall()]


def current_position(conn: Conn) -> BinlogPos:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    if row is None:
        raise SourceSetupError("the binary log is off (SHOW MASTER STATUS is empty)")
    return BinlogPos(str(row[0]), int(row[1]))


def check_available(conn: Conn, name: str, at: BinlogPos) -> bool:
    """Whether the log still holds ``at`` (``False``: that file was purged)."""
    return at.file in {f for f, _ in binlog_files(conn)}


def purged_error(name: str, at: BinlogPos) -> SourceSetupError:
    return SourceSetupError(
        f"{name}: the checkpoint's binlog position {at} is no longer on the server (the "
        "file was purged, by PURGE BINARY LOGS or expire_logs_days): the changes since then "
        "are lost to the log. Take a new snapshot: set snapshot: when_needed in the adapter "
        "(or remove its checkpoint) and restart. To keep this from happening, keep binlogs "
        "longer than the bridge can be down (binlog_expire_logs_seconds)")


def lag_bytes(files: Sequence[tuple[str, int]], at: BinlogPos) -> int:
    """Bytes of log between ``at`` and the end of the last file."""
    total = 0
    seen = False
    for name, size in files:
        if name == at.file:
            seen = True
            total += max(0, size - at.pos)
        elif seen:
            total += size
    return total
