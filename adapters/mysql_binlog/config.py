"""Config model of ``type: mysql_binlog`` (strict, frozen; unknown keys are errors).

```yaml
- name: erp
  type: mysql_binlog
  dsn: mysql://cdc:${ERP_PASSWORD}@legacy-host:3306
  tables:                        # "database.table" or "database.*"
    - erp.invoices
    - {name: erp.customers, columns: {exclude: [notes], mask: [email], mask_salt: "${SALT}"}}
  exclude_tables: [erp.audit_log]
  snapshot: initial              # initial | never | when_needed
  server_id: 4242                # this reader's replica id; default derived from name
```

The ``dsn`` is ``mysql://user:password@host:port`` (the password may be empty, the port
defaults to 3306; a path, if any, is ignored: databases come from ``tables``).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator

from cdc_bridge.adapters.contract import AdapterConfig
from cdc_bridge.adapters.filters import FilterText
from cdc_bridge.adapters.subjects import SubjectTemplateText, TableSubject, table_scopes
from cdc_bridge.adapters.transform import ColumnRules
from cdc_bridge.kernel.model import Duration, StrictModel
from cdc_bridge.kernel.subjects import SubjectScope

_NAME = re.compile(r"^[^.\s]+\.[^.\s]+$")


class BinlogTable(StrictModel):
    #: ``database.table`` or ``database.*``.
    name: str
    #: Column rules (include, exclude, mask) of this table.
    columns: ColumnRules | None = None
    #: Subject template of this table (docs/subjects.md), relative to the subject
    #: prefix, e.g. ``erp.{col:tenant}.{table}.{op}``; default: the adapter's ``subject``.
    subject: SubjectTemplateText | None = None
    #: This table may share subjects with another table (both must say so).
    allow_shared_subject: bool | None = None
    #: Row filter (docs/filters.md), evaluated per row in the bridge.
    filter: FilterText | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the server is, parsed from ``dsn``."""

    host: str
    port: int
    user: str
    password: str

    def pymysql(self, timeout_s: float) -> dict[str, object]:
        """Keyword arguments of ``pymysql.connect`` for this endpoint."""
        return {"host": self.host, "port": self.port, "user": self.user,
                "password": self.password, "connect_timeout": max(1, int(timeout_s)),
                "charset": "utf8mb4"}


class MysqlBinlogConfig(AdapterConfig):
    type: Literal["mysql_binlog"]
    #: ``mysql://user:password@host:port`` of a MariaDB (or MySQL) server with a row
    #: binary log; the user needs REPLICATION SLAVE, REPLICATION CLIENT and SELECT.
    dsn: str = Field(repr=False)
    #: Tables to capture: ``database.table``, ``database.*``, or a mapping with
    #: ``name`` and ``columns``.
    tables: list[str | BinlogTable] = Field(min_length=1)
    #: Tables (``database.table``) left out of a ``database.*``.
    exclude_tables: list[str] = Field(default_factory=list)
    #: ``initial``: copy the tables (``op: r``) consistently with the binlog position
    #: where streaming starts; ``never``: stream from the current end of the log;
    #: ``when_needed``: like ``initial``, and take a new snapshot when the checkpoint's
    #: binlog was purged (instead of stopping with an error).
    snapshot: Literal["initial", "never", "when_needed"] = "initial"
    #: Replica id this reader registers with (must differ from the server's and from
    #: every other replica's); default: derived from the adapter name.
    server_id: int | None = Field(default=None, ge=1, le=4_294_967_295)
    #: Events per batch committed to the outbox (also inside one large transaction).
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    #: A partial batch is committed at the latest this long after its first event.
    max_batch_delay: Duration = 0.02
    #: Rows per snapshot chunk (one outbox commit and one checkpoint per chunk).
    snapshot_chunk_size: int = Field(default=5000, ge=1, le=1_000_000)
    #: The server sends a heartbeat this often while idle (a silent connection for
    #: three times as long is taken as lost).
    heartbeat_interval: Duration = Field(default=5.0, gt=0)
    #: Time zone of ``DATETIME`` values (e.g. ``UTC``, ``Europe/Paris``): when set, they
    #: are written in UTC ending in ``Z``; when not, as stored, without an offset.
    #: ``TIMESTAMP`` values are always UTC ending in ``Z``.
    datetime_timezone: str | None = None
    #: Bound on connecting to the server (each connection of the adapter).
    connect_timeout: Duration = 10.0
    #: Subject template of every table (docs/subjects.md), relative to the subject prefix,
    #: e.g. ``erp.{table}.{op}``; default: ``<adapter>.<schema>.<table>.<op>``.
    subject: SubjectTemplateText | None = None
    #: The template may give two tables the same subject on purpose (docs/subjects.md).
    allow_shared_subject: bool = False

    @field_validator("tables")
    @classmethod
    def _names(cls, value: list[str | BinlogTable]) -> list[str | BinlogTable]:
        for t in value:
            name = t if isinstance(t, str) else t.name
            if not _NAME.match(name):
                raise ValueError(f"table must be 'database.table' or 'database.*', got {name!r}")
        return value

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname:
            raise ValueError("must be mysql://user:password@host:port")
        return value

    @field_validator("datetime_timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(value)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def endpoint(self) -> Endpoint:
        parts = urlsplit(self.dsn)
        return Endpoint(parts.hostname or "127.0.0.1", parts.port or 3306,
                        unquote(parts.username or "root"), unquote(parts.password or ""))

    def replica_id(self) -> int:
        """``server_id``, or a stable id from the adapter name (in 1000..2^31)."""
        if self.server_id is not None:
            return self.server_id
        return 1000 + zlib.crc32(self.name.encode()) % (2**31 - 1000)

    def subject_scopes(self) -> list[SubjectScope]:
        """Each listed ``database.table`` (or ``database.*``) with its template."""
        specs = []
        for i, t in enumerate(self.table_specs()):
            database, _, table = t.name.partition(".")
            specs.append(TableSubject(database, table, t.subject, t.allow_shared_subject,
                                      f"tables[{i}].subject"))
        return table_scopes(self.subject, self.allow_shared_subject, specs)

    def table_specs(self) -> list[BinlogTable]:
        return [t if isinstance(t, BinlogTable) else BinlogTable(name=t) for t in self.tables]
