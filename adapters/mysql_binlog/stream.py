"""The binlog connection: mysql-replication in a thread of its own, records to asyncio.

mysql-replication reads blocking, over PyMySQL. :class:`BinlogReader` runs it in one
thread from a given position, turns each binlog event into the plain records of
:mod:`.changes` (rows converted by :mod:`.values`, with the column layout of the event's
own table map, so a column added by ``ALTER TABLE`` appears exactly from the first row
written after it) and hands them to the event loop through a bounded queue: the reader
waits when the adapter is behind, so memory stays bounded in any transaction size. Each
table map also gives the table's shape (:mod:`.shapes`: its columns, null bitmap and
key), one object per look, carried by the rows that follow it.

The server sends heartbeats (``slave_heartbeat``) while idle, so an idle server does not
look dead; a connection silent for three heartbeats, a cut connection, or a server
restart ends the reader with :class:`~cdc_bridge.kernel.errors.SourceUnavailable` (the
library's own silent reconnect is refused: the supervisor restarts from the committed
checkpoint instead, which is exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
import zoneinfo
from typing import Any

import pymysql
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    GtidEvent,
    HeartbeatLogEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import (
    DeleteRowsEvent,
    TableMapEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from cdc_bridge.adapters.mysql_binlog.changes import (
    Heartbeat,
    Query,
    Record,
    Row,
    Rows,
    TableFilter,
    TxBegin,
    TxEnd,
    statement_table,
)
from cdc_bridge.adapters.mysql_binlog.config import MysqlBinlogConfig
from cdc_bridge.adapters.mysql_binlog.position import BinlogPos
from cdc_bridge.adapters.mysql_binlog.setup import connect, json_columns
from cdc_bridge.adapters.mysql_binlog.shapes import (
    ColumnFacts,
    facts_from_binlog,
    nullable_bits,
    table_shape,
)
from cdc_bridge.adapters.mysql_binlog.values import RowConverter, spec_from_binlog
from cdc_bridge.kernel.errors import SourceUnavailable
from cdc_bridge.kernel.shapes import TableShape

log = logging.getLogger("cdc_bridge.adapter.mysql_binlog")

#: Records handed over at once (one binlog event's rows, at most this many records).
CHUNK = 64
#: Table looks (and table ids) remembered before the caches start over.
_LOOKS = 4096
_EVENTS = [MariadbGtidEvent, GtidEvent, QueryEvent, XidEvent, RotateEvent, HeartbeatLogEvent,
           WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, TableMapEvent]


class _Refused(pymysql.err.OperationalError):  # type: ignore[misc]
    """The library tried to reconnect on its own."""


class BinlogReader:
    def __init__(self, config: MysqlBinlogConfig, start: BinlogPos, tables: TableFilter,
                 loop: asyncio.AbstractEventLoop, queue_size: int = 32) -> None:
        self.config = config
        self.start_at = start
        self.tables = tables
        self.loop = loop
        self.queue: asyncio.Queue[list[Record] | BaseException | None] = asyncio.Queue(
            queue_size)
        self.stopping = threading.Event()
        self.last_heard = time.monotonic()
        #: Binlog position of the end of the last event read, and its server time (ms).
        self.read_to: BinlogPos = start
        self.event_ts_ms = 0
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._converters: dict[tuple[Any, ...], RowConverter] = {}
        self._json: dict[tuple[str, str], set[str]] = {}
        #: Each table id's shape, per its last table map (:meth:`_table_map`).
        self._maps: dict[int, TableShape] = {}
        #: Shapes by look: a table map of a look seen before gives the same object.
        self._shapes: dict[tuple[str, str, tuple[ColumnFacts, ...], tuple[str, ...]],
                           TableShape] = {}
        self._ctl: Any = None
        zone = config.datetime_timezone
        self._zone: dt.tzinfo | None = None if zone is None else zoneinfo.ZoneInfo(zone)

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"binlog-{self.config.name}",
                                        daemon=True)
        self._thread.start()

    def _connection(self, **kwargs: Any) -> Any:
        if kwargs.get("db") != "information_schema":
            if getattr(self, "_dumped", False):
                raise _Refused(2013, "binlog connection lost")
            self._dumped = True
        if "passwd" in kwargs:
            kwargs["password"] = kwargs.pop("passwd")
        if "db" in kwargs:
            kwargs["database"] = kwargs.pop("db")
        return pymysql.connect(**kwargs)

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as e:
            if not self.stopping.is_set():
                self._put(_unavailable(self.config.name, e))
        finally:
            with contextlib.suppress(Exception):
                if self._stream is not None:
                    self._stream.close()
            with contextlib.suppress(Exception):
                if self._ctl is not None:
                    self._ctl.close()

    def _read(self) -> None:
        cfg = self.config
        ep = cfg.endpoint()
        hb = cfg.heartbeat_interval
        settings = {"host": ep.host, "port": ep.port, "user": ep.user,
                    "password": ep.password,
                    "connect_timeout": max(1, int(cfg.connect_timeout)),
                    "read_timeout": max(3, int(hb * 3))}
        self._stream = stream = BinLogStreamReader(
            connection_settings=settings, server_id=cfg.replica_id(), resume_stream=True,
            blocking=True, log_file=self.start_at.file, log_pos=self.start_at.pos,
            only_events=_EVENTS, slave_heartbeat=hb, is_mariadb=False,
            pymysql_wrapper=self._connection, enable_logging=False)
        self._ctl = connect(cfg)
        pending: list[Record] = []
        while not self.stopping.is_set():
            event = stream.fetchone()
            if event is None:
                raise SourceUnavailable(f"{cfg.name}: the server ended the binlog stream")
            self.last_heard = time.monotonic()
            if isinstance(event, TableMapEvent):
                self._table_map(event)
                continue
            if isinstance(event, HeartbeatLogEvent | RotateEvent):
                beat: list[Record] = []
                if isinstance(event, HeartbeatLogEvent) and event.packet.log_pos:
                    # everything up to here is sent: in order with the records before
                    beat = [Heartbeat(BinlogPos(event.ident.rstrip("\x00"),
                                                int(event.packet.log_pos)))]
                if not self._put(pending + beat):
                    return
                pending = []
                continue
            end = BinlogPos(stream.log_file, event.packet.log_pos)
            self.read_to = end
            self.event_ts_ms = event.timestamp * 1000
            pending += self._records(event, end)
            if len(pending) >= CHUNK or not isinstance(event, WriteRowsEvent | UpdateRowsEvent
                                                       | DeleteRowsEvent):
                if not self._put(pending):
                    return
                pending = []

    def _records(self, event: Any, end: BinlogPos) -> list[Record]:
        ts_ms = int(event.timestamp) * 1000
        start = BinlogPos(end.file, end.pos - int(event.packet.event_size))
        if isinstance(event, MariadbGtidEvent):
            return [TxBegin(start, event.gtid, ts_ms, not (event.flags & 1))]
        if isinstance(event, GtidEvent):
            return [TxBegin(start, str(event.gtid), ts_ms, False)]
        if isinstance(event, XidEvent):
            return [TxEnd(end, int(event.xid), ts_ms)]
        if isinstance(event, QueryEvent):
            schema = event.schema.decode() if isinstance(event.schema, bytes) else str(
                event.schema or "")
            query = event.query if isinstance(event.query, str) else event.query.decode()
            kind, name = statement_table(query, schema)
            if kind == "ddl" and name is not None:
                self._json.pop(name, None)
            return [Query(start, end, schema, query, ts_ms)]
        return [self._rows(event, ts_ms)]

    def _rows(self, event: Any, ts_ms: int) -> Rows:
        schema, table = str(event.schema), str(event.table)
        if not self.tables.captured(schema, table):
            return Rows("c", schema, table, (), (), ts_ms)
        conv = self._converter(schema, table, event.columns)
        pk = event.primary_key
        key = [pk] if isinstance(pk, str) and pk else list(pk or ())
        shape = self._maps.get(event.table_id)
        rows: list[tuple[Row | None, Row | None]]
        if isinstance(event, WriteRowsEvent):
            rows = [(None, conv.from_binlog(r["values"], r.get("none_sources")))
                    for r in event.rows]
            return Rows("c", schema, table, key, rows, ts_ms, shape)
        if isinstance(event, DeleteRowsEvent):
            rows = [(conv.from_binlog(r["values"], r.get("none_sources")), None)
                    for r in event.rows]
            return Rows("d", schema, table, key, rows, ts_ms, shape)
        rows = [(conv.from_binlog(r["before_values"], r.get("before_none_sources")),
                 conv.from_binlog(r["after_values"], r.get("after_none_sources")))
                for r in event.rows]
        return Rows("u", schema, table, key, rows, ts_ms, shape)

    def _table_map(self, event: Any) -> None:
        """A table map (one per table and transaction, before its rows): the table's
        shape from it (its columns, null bitmap and primary key), built once per look."""
        schema, table = str(event.schema), str(event.table)
        if not self.tables.captured(schema, table):
            return
        columns = list(event.columns)
        json_cols = self._json_columns(schema, table)
        nullable = nullable_bits(bytes(event.null_bitmask), len(columns))
        facts = tuple(facts_from_binlog(c, n, str(c.name) in json_cols)
                      for c, n in zip(columns, nullable, strict=True))
        key = tuple(str(c.name) for c in columns if getattr(c, "is_primary", False))
        look = (schema, table, facts, key)
        shape = self._shapes.get(look)
        if shape is None:
            shape = self._shapes[look] = table_shape(
                facts, key, self.tables.rules_for(schema, table), self._zone is not None)
        table_id = int(event.table_id)
        self._maps.pop(table_id, None)  # the newest last: the oldest go first
        self._maps[table_id] = shape
        _bound(self._shapes)  # looks and table ids accrue with DDL
        _bound(self._maps)

    def _json_columns(self, schema: str, table: str) -> set[str]:
        """MariaDB's ``JSON`` columns of the table (looked up again after its DDL)."""
        json_cols = self._json.get((schema, table))
        if json_cols is None:
            with self._ctl.cursor() as cur:
                json_cols = self._json[(schema, table)] = json_columns(cur, schema, table)
        return json_cols

    def _converter(self, schema: str, table: str, columns: Any) -> RowConverter:
        layout = (schema, table, *((c.name, c.type) for c in columns))
        conv = self._converters.get(layout)
        if conv is None:
            json_cols = self._json_columns(schema, table)
            specs = [spec_from_binlog(c.name, c.type, getattr(c, "bits", 0),
                                      getattr(c, "set_values", None), c.name in json_cols)
                     for c in columns]
            conv = self._converters[layout] = RowConverter(specs, self._zone)
        return conv

    def _put(self, item: list[Record] | BaseException | None) -> bool:
        """Hand ``item`` to the loop, waiting while the queue is full; ``False``: stopping."""
        fut = asyncio.run_coroutine_threadsafe(self.queue.put(item), self.loop)
        while True:
            try:
                fut.result(timeout=0.5)
                return True
            except TimeoutError:
                if self.stopping.is_set():
                    fut.cancel()
                    return False
            except Exception:
                return False

    # ------------------------------------------------------------------ loop side

    async def get(self) -> list[Record]:
        item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            raise SourceUnavailable(f"{self.config.name}: the binlog reader stopped")
        return item

    def close(self) -> None:
        """Stop the thread: cut its connection so a blocked read returns."""
        self.stopping.set()
        stream = self._stream
        conn = getattr(stream, "_stream_connection", None)
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                import socket

                sock.shutdown(socket.SHUT_RDWR)

    async def join(self, timeout_s: float = 10.0) -> None:
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout_s)


def _bound(cache: dict[Any, Any]) -> None:
    """Drop the oldest entries of ``cache`` beyond :data:`_LOOKS`."""
    while len(cache) > _LOOKS:
        del cache[next(iter(cache))]


def _unavailable(name: str, e: BaseException) -> BaseException:
    if isinstance(e, SourceUnavailable):
        return e
    if isinstance(e, pymysql.err.MySQLError | OSError | EOFError | ConnectionError):
        code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
        if code in (1236,):  # the position is not in the log (purged, or wrong)
            from cdc_bridge.kernel.errors import SourceSetupError

            return SourceSetupError(f"{name}: the server cannot send the binlog from the "
                                    f"checkpoint's position: {e.args[1] if len(e.args) > 1 else e}"
                                    "; take a new snapshot (snapshot: when_needed, or remove "
                                    "the adapter's checkpoint) and restart")
        return SourceUnavailable(f"{name}: binlog connection failed: {e}")
    return e


