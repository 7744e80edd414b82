"""SQLAlchemy Core access to one polled table or query: reflection and the few queries.

Identifiers from the config are resolved through reflected ``Table``/``Column`` objects
(or, for ``mode: query``, the columns the query itself returns), so the dialect quotes
them; they are never pasted into SQL text. The user's own SELECT in ``mode: query`` is
the one piece of SQL text, wrapped as a subquery we filter and order with Core.

All reads are *keyset* pages: ``WHERE cursor > :after ORDER BY cursor LIMIT :n`` where
the cursor is a tuple of columns, expanded as ``c1 > v1 OR (c1 = v1 AND c2 > v2) ...``
(no row-value syntax, which some dialects lack). Memory per read is one page.

Session set-up for exact time handling: MariaDB/MySQL sessions use ``time_zone =
'+00:00'`` and PostgreSQL sessions ``TimeZone = UTC``, so ``TIMESTAMP`` (MariaDB) and
``timestamptz`` (PostgreSQL) values come back as UTC; naive ``DATETIME``/``timestamp``
columns are returned exactly as stored. SQLite has no date type: date/time columns are
read as the text the application stored, and compared as text.

A page that fails because a value cannot be decoded (see :mod:`.badrows`) is read
again in halves, down to single rows, so only the rows that fail are set aside as
:class:`~.badrows.BadRow` (each then probed column by column to name the bad column);
the page's other rows are returned as usual. This costs a few extra queries, and only
for such pages.

Schema changes: :meth:`TableSource.refresh` (once per poll, before its first page) reads
the table's columns with one catalogue query and, when they changed, reflects the table
again and rebuilds every column list, query part and the :class:`TableShape` its events
carry (:mod:`.shapes`), in a transaction whose snapshot the poll's first page shares.

Blocking code: callers run it in a worker thread.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import (
    DBAPIError,
    InterfaceError,
    NoSuchTableError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.sql.elements import KeyedColumnElement

from cdc_bridge.adapters.filters import RowFilter, row_filter
from cdc_bridge.adapters.filters.sql import to_sqlalchemy
from cdc_bridge.adapters.snapshot_where import check_where, table_problem
from cdc_bridge.adapters.sql_poll.badrows import BadRow, undecodable
from cdc_bridge.adapters.sql_poll.config import PollTable
from cdc_bridge.adapters.sql_poll.shapes import DECLARED, Look, look_of, table_shape
from cdc_bridge.adapters.sql_poll.values import Cursor
from cdc_bridge.kernel.errors import BridgeError, DecodeError, SourceSetupError, SourceUnavailable
from cdc_bridge.kernel.events import non_finite_text
from cdc_bridge.kernel.shapes import TableShape

log = logging.getLogger("cdc_bridge.adapter.sql_poll")

_SQLITE_TIME_TYPES = (sa.DateTime, sa.Date, sa.Time)
#: What waiting will not fix: a missing table or column, a missing privilege, a refused
#: login (wrong password, no access to the database), as the postgres source treats them.
_SETUP = re.compile(r"no such (table|column)|doesn't exist|does not exist|unknown column"
                    r"|command denied|permission denied|access denied", re.IGNORECASE)


def create_engine(url: str) -> sa.Engine:
    """An engine with the session settings above; secrets stay inside the URL object."""
    try:
        sa_url = sa.engine.make_url(url)
    except sa.exc.ArgumentError as e:
        raise SourceSetupError("sql_poll: 'url' is not a valid SQLAlchemy URL") from e
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if sa_url.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs["pool_recycle"] = 1800
    try:
        engine = sa.create_engine(sa_url, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as e:
        raise SourceSetupError(f"sql_poll: no SQLAlchemy dialect/driver for "
                               f"{sa_url.drivername!r}: {e}") from None
    backend = engine.dialect.name

    @sa.event.listens_for(engine, "connect")
    def _session(dbapi_conn: Any, _record: Any) -> None:
        if backend in ("mysql", "mariadb"):
            with dbapi_conn.cursor() as cur:
                cur.execute("SET time_zone = '+00:00'")
        elif backend == "postgresql":
            with dbapi_conn.cursor() as cur:
                cur.execute("SET TIME ZONE 'UTC'")
            dbapi_conn.commit()

    return engine


def classify(e: BaseException, what: str) -> BridgeError:
    """Map a database exception to the bridge's error tree (no secrets in the text)."""
    orig = getattr(e, "orig", None) or e
    text = f"{type(orig).__name__}: {orig}"
    if undecodable(e):
        return DecodeError(f"{what}: a key or cursor value cannot be decoded, so the row "
                           f"cannot be identified or skipped: {text}")
    if isinstance(e, DBAPIError) and _SETUP.search(str(orig)):
        return SourceSetupError(f"{what}: {text}")
    if isinstance(e, OperationalError | InterfaceError) or (
            isinstance(e, DBAPIError) and e.connection_invalidated):
        return SourceUnavailable(f"{what}: source database unavailable: {text}")
    if isinstance(e, SQLAlchemyError | OSError):
        return SourceUnavailable(f"{what}: source query failed: {text}")
    return SourceUnavailable(f"{what}: {text}")


def _sqlite_text_times(inspector: Any, table: sa.Table, column_info: dict[str, Any]) -> None:
    if isinstance(column_info["type"], _SQLITE_TIME_TYPES):
        # read as the text stored; the declared type stays the shape's source type
        column_info.setdefault("info", {})[DECLARED] = column_info["type"]
        column_info["type"] = sa.String()


def _floats_as_floats(inspector: Any, table: sa.Table, column_info: dict[str, Any]) -> None:
    """Binary floats stay JSON numbers: some dialects (MySQL ``DOUBLE``) reflect them as
    decimals, which would write ``1.5`` as ``"1.5000000000"`` (digits the column never had).
    """
    kind = column_info["type"]
    if isinstance(kind, sa.Float) and kind.asdecimal:
        kind.asdecimal = False


def _mysql_backticks(inspector: Any, table: sa.Table, column_info: dict[str, Any]) -> None:
    """MySQL/MariaDB reflection reads ``SHOW CREATE TABLE`` and keeps a backtick inside a
    name doubled (```a``b``` gives ``a``b``); the column is really named ``a`b``."""
    column_info["name"] = column_info["name"].replace("``", "`")


@dataclass(slots=True)
class Rows:
    """One page: the rows read, the rows that could not be decoded, where the page ends."""

    rows: list[dict[str, Any]]
    #: Rows set aside (see :mod:`.badrows`); empty unless a value could not be decoded.
    bad: list[BadRow] = field(default_factory=list)
    #: Order-column values of the last row of the page, good or bad (``None``: empty).
    last: Cursor | None = None

    def __len__(self) -> int:
        return len(self.rows) + len(self.bad)


def after_clause(cols: Sequence[sa.ColumnElement[Any]], values: Cursor) -> sa.ColumnElement[bool]:
    """``(c1, c2, ...) > (v1, v2, ...)`` in lexicographic order, without row values."""
    ors = []
    for i, col in enumerate(cols):
        ands = [cols[j] == values[j] for j in range(i)]
        ands.append(col > values[i])
        ors.append(sa.and_(*ands))
    return sa.or_(*ors)


class TableSource:
    """One configured table (or query): reflected columns, key and cursor columns."""

    def __init__(self, engine: sa.Engine, spec: PollTable) -> None:
        self.spec = spec
        self.mode = spec.effective_mode
        if spec.schema is not None:  # explicit: the name is taken whole (it may hold dots)
            schema, name = spec.schema, spec.name
        else:
            schema, _, name = spec.name.rpartition(".")
        self.schema = schema or None
        self.table_name = name
        if spec.mode == "query":
            self.schema = None
            self.table_name = spec.name
        self.dialect = engine.dialect
        #: The look of the table as the last catalogue query saw it (:meth:`refresh`).
        self.look: Look = ()
        self._strict = True
        #: What this table's events look like; the same object until the look changes.
        self.shape: TableShape | None = None
        #: InnoDB's table list under its MariaDB and MySQL 8 names (see ``identity``).
        self._innodb_tables = ["INNODB_SYS_TABLES", "INNODB_TABLES"]
        try:
            with engine.connect() as conn:
                self.look = self._look_now(conn)
                conn.rollback()
        except SQLAlchemyError as e:
            raise classify(e, f"reading the columns of {self.spec.ident!r}") from None
        self._build(engine, strict=True)

    def _build(self, bind: sa.Engine | sa.Connection, strict: bool) -> None:
        """Reflect (or probe) the table and derive every column list and the shape.
        ``strict``: a column named by the column rules must exist (at start); a re-build
        while polling only warns, since such a rule then has nothing to do."""
        spec = self.spec
        self._strict = strict
        selectable: sa.Table | sa.Subquery
        if spec.mode == "query":
            selectable = self._query_selectable(bind, spec.query or "")
        else:
            selectable = self._reflect(bind, self.schema, self.table_name)
        self.selectable = selectable
        cols = selectable.c
        inc = spec.incrementing_column or ("id" if self.mode == "incrementing" else None)
        self.key_cols = self._key_columns(inc)
        cursor_names: list[str] = []
        if self.mode == "incrementing":
            assert inc is not None
            cursor_names = [inc]
        elif self.mode == "timestamp":
            cursor_names = [spec.timestamp_column or "", *self.key_cols]
        elif self.mode == "timestamp+incrementing":
            cursor_names = [spec.timestamp_column or "", inc or ""]
        else:
            cursor_names = list(self.key_cols)
        for c in cursor_names:
            self._require(c, "a cursor column")
        self.cursor_names = cursor_names
        self.ts_name = spec.timestamp_column
        self.inc_name = inc
        self.cursor_cols = [cols[c] for c in cursor_names]
        self.key_elems = [cols[c] for c in self.key_cols]
        self.read_cols = self._read_columns(strict)
        self.float_cols = _float_columns(self.read_cols)
        #: The table's row filter: pushed into every read (``filter_clause``) unless it
        #: reads ``op``; then ``row_filter`` is evaluated per row by the modes.
        self.row_filter: RowFilter | None = None
        self.filter_clause: sa.ColumnElement[bool] | None = None
        if spec.filter is not None:
            self.row_filter = row_filter(spec.filter)
            unknown = self.row_filter.unknown_columns({c.name for c in cols})
            if unknown:
                raise SourceSetupError(
                    f"table {spec.ident!r}: its filter reads {', '.join(map(repr, unknown))}, "
                    f"which the table does not have (filter: {spec.filter})")
            if not self.row_filter.uses_op:
                self.filter_clause = to_sqlalchemy(self.row_filter.expr, lambda n: cols[n])
                self.row_filter = None
        self.shape = table_shape(self.read_cols, self.key_cols, spec.columns, self.dialect,
                                 self.shape)

    def refresh(self, conn: sa.Connection) -> bool:
        """Blocking: one catalogue query; when the table's columns (names, types,
        nullability) differ from what was reflected, reflect it again and rebuild the
        queries and the shape. True when the look changed. A cursor or key column gone
        is a :class:`SourceSetupError` for this table.

        It starts a new transaction first, with its snapshot taken before the look
        (:meth:`_pin`), so the reads that follow in the same transaction see no row
        written after the look: a column added meanwhile cannot be missing from a row
        read under the old look (it comes with the next poll, under the new one)."""
        self._pin(conn)
        look = self._look_now(conn)
        if not look or look == self.look:  # (empty: gone right now; the reads will say)
            return False
        old = self.shape
        self._build(conn, strict=False)
        self.look = look
        if self.shape is not old:
            log.warning("table %r: its columns changed: now %s", self.spec.ident,
                        ", ".join(self.shape.names()) if self.shape else "?")
        return True

    def _pin(self, conn: sa.Connection) -> None:
        """A new transaction whose snapshot is taken now (MariaDB/MySQL: ``WITH CONSISTENT
        SNAPSHOT``; PostgreSQL: ``REPEATABLE READ``, taken by its first query). Other
        databases: a new transaction only (each read then sees the rows of its moment)."""
        if conn.in_transaction():
            conn.rollback()
        dialect = conn.dialect.name
        if dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        elif dialect == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def _look_now(self, conn: sa.Connection) -> Look:
        """The table's columns from the catalogue: one query (``mode: query``: the query's
        own columns, read with ``LIMIT 0``)."""
        if self.spec.mode == "query":
            text = (self.spec.query or "").strip().rstrip(";").strip()
            probe: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(
                sa.text(text).columns().subquery("q")).limit(0)
            names = list(conn.execute(probe).keys())
            return look_of((n, "", None) for n in names)
        dialect = conn.dialect.name
        params = {"t": self.table_name, "s": self.schema}
        if dialect in ("mysql", "mariadb"):
            query = sa.text(
                "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE FROM information_schema.COLUMNS "
                "WHERE TABLE_NAME = :t AND TABLE_SCHEMA = COALESCE(:s, DATABASE()) "
                "ORDER BY ORDINAL_POSITION")
        elif dialect == "postgresql":
            query = sa.text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull "
                "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN "
                "pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :t AND "
                "n.nspname = COALESCE(:s, current_schema()) AND a.attnum > 0 AND NOT "
                "a.attisdropped ORDER BY a.attnum")
        elif dialect == "sqlite":
            query = sa.text('SELECT name, type, NOT "notnull" FROM pragma_table_info(:t'
                            + (", :s)" if self.schema else ")") + " ORDER BY cid")
        else:
            try:
                found = sa.inspect(conn).get_columns(self.table_name, self.schema)
            except NoSuchTableError:
                return ()
            return look_of((c["name"], repr(c["type"]), c.get("nullable")) for c in found)
        return look_of(conn.execute(query, params).all())

    # --- set-up -----------------------------------------------------------------------

    def _reflect(self, bind: sa.Engine | sa.Connection, schema: str | None,
                 name: str) -> sa.Table:
        listeners = [("column_reflect", _floats_as_floats)]
        if bind.dialect.name == "sqlite":
            listeners.append(("column_reflect", _sqlite_text_times))
        elif bind.dialect.name in ("mysql", "mariadb"):
            listeners.append(("column_reflect", _mysql_backticks))
        try:
            return sa.Table(name, sa.MetaData(), schema=schema, autoload_with=bind,
                            listeners=listeners)
        except NoSuchTableError:
            raise SourceSetupError(f"table {self.spec.ident!r} not found in the source "
                                   f"database") from None
        except SQLAlchemyError as e:
            raise classify(e, f"reflecting table {self.spec.ident!r}") from None

    def _query_selectable(self, bind: sa.Engine | sa.Connection, query: str) -> sa.Subquery:
        text = query.strip().rstrip(";").strip()
        probe: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(
            sa.text(text).columns().subquery("q")).limit(0)
        try:
            if isinstance(bind, sa.Connection):
                names = list(bind.execute(probe).keys())
            else:
                with bind.connect() as conn:
                    names = list(conn.execute(probe).keys())
        except (OperationalError, InterfaceError) as e:
            raise classify(e, f"query of {self.spec.ident!r}") from None
        except SQLAlchemyError as e:
            orig = getattr(e, "orig", None) or e
            raise SourceSetupError(f"query of {self.spec.ident!r} failed: {orig}") from None
        if len(set(names)) != len(names):
            raise SourceSetupError(f"query of {self.spec.ident!r} returns duplicate column "
                                   f"names; alias them")
        return sa.text(text).columns(*[sa.column(n) for n in names]).subquery("q")

    def _key_columns(self, inc: str | None) -> list[str]:
        if self.spec.key_columns:
            for c in self.spec.key_columns:
                self._require(c, "a key column")
            return list(self.spec.key_columns)
        pk = [c.name for c in getattr(self.selectable, "primary_key", [])]
        if pk:
            return pk
        if self.mode == "incrementing" and inc is not None:
            self._require(inc, "the incrementing column")
            return [inc]
        raise SourceSetupError(
            f"table {self.spec.ident!r} has no primary key: set 'key_columns' (mode "
            f"{self.mode} needs a unique row identity)")

    def _require(self, column: str, role: str | None = None) -> None:
        if column not in self.selectable.c:
            what = f" ({role}, dropped or renamed while polling)" if role and \
                not self._strict else ""
            raise SourceSetupError(f"table {self.spec.ident!r} has no column {column!r}{what}")

    def _read_columns(self, strict: bool = True) -> list[KeyedColumnElement[Any]]:
        rules = self.spec.columns
        needed = set(self.key_cols) | set(self.cursor_names)
        include = set(rules.include) if rules.include is not None else None
        for c in (*(rules.include or []), *rules.exclude, *rules.mask):
            if strict:
                self._require(c)
            elif c not in self.selectable.c:
                log.warning("table %r: column %r of its 'columns' rules is gone: the rule "
                            "has nothing to do (a restart will refuse it until the config "
                            "drops it)", self.spec.ident, c)
        out = []
        for col in self.selectable.c:
            if col.name in needed or (col.name not in rules.exclude and
                                      (include is None or col.name in include)):
                out.append(col)
        return out

    # --- reads ------------------------------------------------------------------------

    def where_clause(self, where: str | None) -> sa.ColumnElement[bool] | None:
        """A partial backfill's ``where`` as a condition on this table (``None``: every
        row); :class:`ValueError` when it does not parse, reads ``op`` or names a column
        the table lacks."""
        if where is None:
            return None
        rf = check_where(where)
        problem = table_problem(rf, self.spec.ident, self.selectable.c.keys())
        if problem is not None:
            raise ValueError(problem)
        return to_sqlalchemy(rf.expr, lambda n: self.selectable.c[n])

    def read_after(self, conn: sa.Connection, after: Cursor | None, limit: int,
                   only: sa.ColumnElement[bool] | None = None) -> Rows:
        """Up to ``limit`` rows with cursor > ``after`` in cursor order (of those matching
        ``only``, when given)."""
        not_null = self.ts_name is not None and self.mode != "diff"
        return self._read(conn, self.cursor_names, after, limit, not_null, only)

    def read_by_key(self, conn: sa.Connection, after: Cursor | None, limit: int,
                    upto: Cursor | None = None, only: sa.ColumnElement[bool] | None = None
                    ) -> Rows:
        """Up to ``limit`` rows with ``after`` < key <= ``upto`` in key order (re-snapshots;
        of those matching ``only``, when given)."""
        cols = [self.selectable.c[n] for n in self.key_cols]
        bound = None if upto is None else sa.not_(after_clause(cols, upto))
        if only is not None:
            bound = only if bound is None else sa.and_(bound, only)
        return self._read(conn, self.key_cols, after, limit, False, bound)

    def max_key(self, conn: sa.Connection, only: sa.ColumnElement[bool] | None = None
                ) -> Cursor | None:
        """The largest key in the table (of the rows matching ``only``, when given), in the
        database's own order (``None``: empty)."""
        cols = [self.selectable.c[n] for n in self.key_cols]
        query = sa.select(*cols).order_by(*[c.desc() for c in cols]).limit(1)
        if only is not None:
            query = query.where(only)
        row = conn.execute(query).first()
        return None if row is None else tuple(row)

    def _read(self, conn: sa.Connection, order: list[str], after: Cursor | None, limit: int,
              not_null: bool, bound: sa.ColumnElement[bool] | None = None) -> Rows:
        cols = [self.selectable.c[n] for n in order]
        query = self._select(self.read_cols, cols, not_null, bound).limit(limit)
        if after is not None:
            query = query.where(after_clause(cols, after))
        try:
            rows = _fetch(conn, query, self.float_cols)
        except DBAPIError as e:
            if not undecodable(e):
                raise
            conn.rollback()  # PostgreSQL aborts the transaction on an error
            return self._isolate(conn, order, cols, after, limit, not_null, bound)
        return Rows(rows, [], tuple(rows[-1][n] for n in order) if rows else None)

    def _select(self, what: Sequence[sa.ColumnElement[Any]],
                order: Sequence[sa.ColumnElement[Any]], not_null: bool,
                bound: sa.ColumnElement[bool] | None = None) -> sa.Select[Any]:
        query = sa.select(*what).order_by(*order)
        if self.filter_clause is not None:
            query = query.where(self.filter_clause)
        if not_null and self.ts_name is not None:
            query = query.where(self.selectable.c[self.ts_name].is_not(None))
        if bound is not None:
            query = query.where(bound)
        return query

    def _isolate(self, conn: sa.Connection, order: list[str],
                 cols: Sequence[sa.ColumnElement[Any]], after: Cursor | None, limit: int,
                 not_null: bool, bound: sa.ColumnElement[bool] | None = None) -> Rows:
        """Re-read a page that failed to decode, setting aside only the rows that fail."""
        ids = list(dict.fromkeys([*order, *self.key_cols]))
        probe = self._select([self.selectable.c[n] for n in ids], cols, not_null,
                             bound).limit(limit)
        if after is not None:
            probe = probe.where(after_clause(cols, after))
        marks = _fetch(conn, probe)  # a key/cursor value that fails here: DecodeError
        cursors = [tuple(m[n] for n in order) for m in marks]
        out = Rows([], [], cursors[-1] if cursors else None)

        def span(i: int, j: int) -> None:
            if j - i == 1:
                where = sa.and_(*[c == v for c, v in zip(cols, cursors[i], strict=True)])
            else:
                upper = sa.not_(after_clause(cols, cursors[j - 1]))
                low = cursors[i - 1] if i else after
                where = upper if low is None else sa.and_(after_clause(cols, low), upper)
            try:
                out.rows.extend(_fetch(conn, self._select(self.read_cols, cols, not_null,
                                                          bound).where(where),
                                       self.float_cols))
                return
            except DBAPIError as e:
                if not undecodable(e):
                    raise
                conn.rollback()
                if j - i == 1:
                    out.bad.append(self._bad_row(conn, where, cursors[i], marks[i], e))
                    return
            mid = (i + j) // 2
            span(i, mid)
            span(mid, j)

        if cursors:
            span(0, len(cursors))
        log.warning("table %r: %d row(s) in a page of %d cannot be decoded: sent to the "
                    "dead-letter subject", self.spec.ident, len(out.bad), len(cursors))
        return out

    def _bad_row(self, conn: sa.Connection, where: sa.ColumnElement[bool], cursor: Cursor,
                 ident: dict[str, Any], error: DBAPIError) -> BadRow:
        """Probe the row column by column: which ones fail, and what can be read."""
        partial: dict[str, Any] = {}
        bad: list[str] = []
        first: BaseException | None = None
        for col in self.read_cols:
            try:
                partial[col.name] = conn.execute(sa.select(col).where(where)).scalar()
            except DBAPIError as e:
                if not undecodable(e):
                    raise
                conn.rollback()
                bad.append(col.name)
                first = first or e
        orig = getattr(first or error, "orig", None) or first or error
        what = f"column(s) {', '.join(bad)}" if bad else "the row"
        return BadRow(cursor, {k: ident[k] for k in self.key_cols}, bad,
                      f"{what} cannot be decoded: {type(orig).__name__}: {orig}", partial)

    def max_cursor(self, conn: sa.Connection) -> Cursor | None:
        query = sa.select(*self.cursor_cols).order_by(
            *[c.desc() for c in self.cursor_cols]).limit(1)
        if self.ts_name is not None:
            query = query.where(self.selectable.c[self.ts_name].is_not(None))
        row = conn.execute(query).first()
        return None if row is None else tuple(row)

    def identity(self, conn: sa.Connection) -> str | None:
        """What tells this table from one dropped and created again under its name (or,
        on MySQL/MariaDB, emptied by TRUNCATE, which also re-creates it): PostgreSQL's
        OID, MySQL/MariaDB's creation time. ``None`` where the database cannot tell
        (SQLite, others, a query): then no reset is ever detected."""
        if self.spec.mode == "query":
            return None
        dialect = conn.dialect.name
        if dialect == "postgresql":
            query = sa.text("SELECT c.oid::text FROM pg_class c JOIN pg_namespace n ON "
                            "n.oid = c.relnamespace WHERE c.relname = :t AND "
                            "n.nspname = COALESCE(:s, current_schema())")
        elif dialect in ("mysql", "mariadb"):
            return self._mysql_identity(conn)
        else:
            return None
        value = conn.execute(query, {"t": self.table_name, "s": self.schema}).scalar()
        return None if value is None else str(value)

    def _mysql_identity(self, conn: sa.Connection) -> str | None:
        """Creation time (seconds only) and, where readable, InnoDB's table id, which
        tells apart a table re-created within the same second."""
        params = {"t": self.table_name, "s": self.schema}
        for innodb in self._innodb_tables:
            query = sa.text(
                "SELECT CONCAT(CAST(t.CREATE_TIME AS CHAR), '#', COALESCE((SELECT "
                f"CAST(i.TABLE_ID AS CHAR) FROM information_schema.{innodb} i WHERE i.NAME "
                "= CONCAT(t.TABLE_SCHEMA, '/', t.TABLE_NAME)), '')) FROM "
                "information_schema.TABLES t WHERE t.TABLE_NAME = :t AND "
                "t.TABLE_SCHEMA = COALESCE(:s, DATABASE())")
            try:
                value = conn.execute(query, params).scalar()
            except SQLAlchemyError:  # not this server's name, or no PROCESS privilege
                conn.rollback()
                self._innodb_tables = self._innodb_tables[1:]
                continue
            return None if value is None else str(value)
        value = conn.execute(sa.text(
            "SELECT CAST(CREATE_TIME AS CHAR) FROM information_schema.TABLES WHERE "
            "TABLE_NAME = :t AND TABLE_SCHEMA = COALESCE(:s, DATABASE())"), params).scalar()
        return None if value is None else str(value)

    def count(self, conn: sa.Connection, only: sa.ColumnElement[bool] | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(self.selectable)
        if self.filter_clause is not None:
            query = query.where(self.filter_clause)
        if only is not None:
            query = query.where(only)
        return int(conn.execute(query).scalar_one())

    def check_where(self, conn: sa.Connection, only: sa.ColumnElement[bool]) -> None:
        """Let the database judge a partial backfill's condition (types) on no row."""
        conn.execute(sa.select(sa.literal(1)).select_from(self.selectable).where(only)
                     .limit(0)).fetchall()

    def cursor_of(self, row: dict[str, Any]) -> Cursor:
        return tuple(row[c] for c in self.cursor_names)


def _fetch(conn: sa.Connection, query: sa.Select[Any],
           floats: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of ``query`` as dicts; non-finite values of the ``floats`` columns become
    their JSON-safe strings."""
    result = conn.execute(query)
    keys = tuple(result.keys())
    rows = [dict(zip(keys, row, strict=True)) for row in result]
    if floats:
        for row in rows:
            for name in floats:
                value = row.get(name)
                if type(value) is float and not math.isfinite(value):
                    row[name] = non_finite_text(value)
    return rows


def _float_columns(columns: Sequence[sa.ColumnElement[Any]]) -> list[str]:
    """Columns that may hold floats: declared float types, and untyped ones (``query``)."""
    return [str(c.key) for c in columns if isinstance(c.type, sa.Float | sa.types.NullType)]
