"""The values the pgoutput decoder produces: frozen dataclasses, one per message kind.

Split from :mod:`cdc_bridge.adapters.postgres.pgoutput` (the decoder) so that code consuming
messages can read their shapes without the parsing machinery. Pure data, no logic
beyond ``__repr__`` of the unchanged-TOAST sentinel.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal

from cdc_bridge.kernel.errors import DecodeError

#: Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
PG_EPOCH_OFFSET_US: Final = 946_684_800_000_000


class PgOutputError(DecodeError):
    """Bytes from the replication stream that are not valid pgoutput / replication data."""


class _Unchanged(enum.Enum):
    UNCHANGED_TOAST = "u"

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"


#: Value of a TOASTed column that did not change and that the server did not send.
UNCHANGED_TOAST: Final = _Unchanged.UNCHANGED_TOAST
Value = None | str | bytes | Literal[_Unchanged.UNCHANGED_TOAST]

# ---------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class XLogData:
    wal_start: int
    wal_end: int
    server_clock_us: int
    payload: memoryview | bytes


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    wal_end: int
    server_clock_us: int
    reply_requested: bool


@dataclass(frozen=True, slots=True)
class TupleData:
    """Column values in the relation's column order (see the module docstring)."""

    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Column:
    is_key: bool
    name: str
    type_oid: int
    type_modifier: int


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts_us: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: TupleData
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    new: TupleData
    key: TupleData | None = None  # 'K': old key columns (replica identity changed)
    old: TupleData | None = None  # 'O': whole old row (REPLICA IDENTITY FULL)
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    key: TupleData | None = None
    old: TupleData | None = None
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts_us: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    subxid: int
    abort_lsn: int | None = None  # protocol 4 (parallel streaming) only
    abort_ts_us: int | None = None


Message = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate
    | LogicalMessage | StreamStart | StreamStop | StreamCommit | StreamAbort
)
