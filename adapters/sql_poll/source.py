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

Blocking code: callers run it in a worker thread.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
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

from adapters.sql_poll.config import PollTable
from adapters.sql_poll.values import Cursor
from bridge.errors import BridgeError, SourceSetupError, SourceUnavailable

log = logging.getLogger("cdc_bridge.adapter.sql_poll")

_SQLITE_TIME_TYPES = (sa.DateTime, sa.Date, sa.Time)
_MISSING = re.compile(r"no such (table|column)|doesn't exist|does not exist|unknown column",
                      re.IGNORECASE)


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
    if isinstance(e, DBAPIError) and _MISSING.search(str(orig)):
        return SourceSetupError(f"{what}: {text}")
    if isinstance(e, OperationalError | InterfaceError) or (
            isinstance(e, DBAPIError) and e.connection_invalidated):
        return SourceUnavailable(f"{what}: source database unavailable: {text}")
    if isinstance(e, SQLAlchemyError | OSError):
        return SourceUnavailable(f"{what}: source query failed: {text}")
    return SourceUnavailable(f"{what}: {text}")


def _sqlite_text_times(inspector: Any, table: sa.Table, column_info: dict[str, Any]) -> None:
    if isinstance(column_info["type"], _SQLITE_TIME_TYPES):
        column_info["type"] = sa.String()


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
        schema, _, name = spec.name.rpartition(".")
        self.schema = schema or None
        self.table_name = name
        self.selectable: sa.Table | sa.Subquery
        if spec.mode == "query":
            self.schema = None
            self.table_name = spec.name
            self.selectable = self._query_selectable(engine, spec.query or "")
        else:
            self.selectable = self._reflect(engine, schema or None, name)
        cols = self.selectable.c
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
            self._require(c)
        self.cursor_names = cursor_names
        self.ts_name = spec.timestamp_column
        self.inc_name = inc
        self.cursor_cols = [cols[c] for c in cursor_names]
        self.key_elems = [cols[c] for c in self.key_cols]
        self.read_cols = self._read_columns()

    # --- set-up -----------------------------------------------------------------------

    def _reflect(self, engine: sa.Engine, schema: str | None, name: str) -> sa.Table:
        listeners = []
        if engine.dialect.name == "sqlite":
            listeners.append(("column_reflect", _sqlite_text_times))
        try:
            return sa.Table(name, sa.MetaData(), schema=schema, autoload_with=engine,
                            listeners=listeners)
        except NoSuchTableError:
            raise SourceSetupError(f"table {self.spec.name!r} not found in the source "
                                   f"database") from None
        except SQLAlchemyError as e:
            raise classify(e, f"reflecting table {self.spec.name!r}") from None

    def _query_selectable(self, engine: sa.Engine, query: str) -> sa.Subquery:
        text = query.strip().rstrip(";").strip()
        probe: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(
            sa.text(text).columns().subquery("q")).limit(0)
        try:
            with engine.connect() as conn:
                names = list(conn.execute(probe).keys())
        except (OperationalError, InterfaceError) as e:
            raise classify(e, f"query of {self.spec.name!r}") from None
        except SQLAlchemyError as e:
            orig = getattr(e, "orig", None) or e
            raise SourceSetupError(f"query of {self.spec.name!r} failed: {orig}") from None
        if len(set(names)) != len(names):
            raise SourceSetupError(f"query of {self.spec.name!r} returns duplicate column "
                                   f"names; alias them")
        return sa.text(text).columns(*[sa.column(n) for n in names]).subquery("q")

    def _key_columns(self, inc: str | None) -> list[str]:
        if self.spec.key_columns:
            for c in self.spec.key_columns:
                self._require(c)
            return list(self.spec.key_columns)
        pk = [c.name for c in getattr(self.selectable, "primary_key", [])]
        if pk:
            return pk
        if self.mode == "incrementing" and inc is not None:
            self._require(inc)
            return [inc]
        raise SourceSetupError(
            f"table {self.spec.name!r} has no primary key: set 'key_columns' (mode "
            f"{self.mode} needs a unique row identity)")

    def _require(self, column: str) -> None:
        if column not in self.selectable.c:
            raise SourceSetupError(f"table {self.spec.name!r} has no column {column!r}")

    def _read_columns(self) -> list[KeyedColumnElement[Any]]:
        rules = self.spec.columns
        needed = set(self.key_cols) | set(self.cursor_names)
        include = set(rules.include) if rules.include is not None else None
        for c in (*(rules.include or []), *rules.exclude, *rules.mask):
            self._require(c)
        out = []
        for col in self.selectable.c:
            if col.name in needed or (col.name not in rules.exclude and
                                      (include is None or col.name in include)):
                out.append(col)
        return out

    # --- reads ------------------------------------------------------------------------

    def read_after(self, conn: sa.Connection, after: Cursor | None,
                   limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` rows with cursor > ``after`` in cursor order."""
        query = sa.select(*self.read_cols).order_by(*self.cursor_cols).limit(limit)
        if self.ts_name is not None and self.mode != "diff":
            query = query.where(self.selectable.c[self.ts_name].is_not(None))
        if after is not None:
            query = query.where(after_clause(self.cursor_cols, after))
        return [dict(row) for row in conn.execute(query).mappings()]

    def read_by_key(self, conn: sa.Connection, after: Cursor | None,
                    limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` rows with key > ``after`` in key order (re-snapshots)."""
        query = sa.select(*self.read_cols).order_by(*self.key_elems).limit(limit)
        if after is not None:
            query = query.where(after_clause(self.key_elems, after))
        return [dict(row) for row in conn.execute(query).mappings()]

    def max_cursor(self, conn: sa.Connection) -> Cursor | None:
        query = sa.select(*self.cursor_cols).order_by(
            *[c.desc() for c in self.cursor_cols]).limit(1)
        if self.ts_name is not None:
            query = query.where(self.selectable.c[self.ts_name].is_not(None))
        row = conn.execute(query).first()
        return None if row is None else tuple(row)

    def count(self, conn: sa.Connection) -> int:
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(self.selectable)).scalar_one())

    def cursor_of(self, row: dict[str, Any]) -> Cursor:
        return tuple(row[c] for c in self.cursor_names)
