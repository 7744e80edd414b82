"""Pure decoder of PostgreSQL logical replication: the COPY_BOTH wrapper and pgoutput.

Two layers, both bytes in / frozen dataclasses out, with no I/O:

* The replication sub-protocol carried in CopyData: :func:`parse_copy_data` reads the
  server's ``w`` (XLogData, whose payload is one pgoutput message) and ``k`` (primary
  keepalive) messages; :func:`standby_status_update` builds our ``r`` reply.
* pgoutput itself, protocol versions 1 and 2: :func:`decode_message` turns one payload
  into one of the :data:`Message` dataclasses. Version 2 adds streaming of in-progress
  transactions (Stream Start/Stop/Commit/Abort); between Stream Start and Stream Stop
  the data messages (Relation, Type, Insert, Update, Delete, Truncate, Message) carry
  the streamed transaction's xid as a prefix, so the caller passes ``in_stream=True``
  there. The optional abort LSN/timestamp of protocol 4 Stream Abort is read if present.

Tuple values keep the wire's four kinds: ``None`` (SQL NULL), :data:`UNCHANGED_TOAST`
(an unchanged TOASTed value the server did not send), ``str`` (text format, UTF-8: the
server converts to client_encoding UTF8) and ``bytes`` (binary format).

Every malformed, truncated or unknown input raises :class:`PgOutputError` naming the
message kind, the offset and what was expected; nothing else leaks out (no
``IndexError``, ``struct.error`` or ``UnicodeDecodeError``). Each loop is bounded by the
input length, so no input can hang the decoder. The hot path uses precompiled
:class:`struct.Struct` objects and slices of one ``bytes`` object; the only per-column
Python loop is the one over a tuple's columns.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from typing import Final

from cdc_bridge.adapters.postgres.pgoutput_messages import (
    PG_EPOCH_OFFSET_US,
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    PgOutputError,
    PrimaryKeepalive,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
    Value,
    XLogData,
)

__all__ = [
    "PG_EPOCH_OFFSET_US",
    "UNCHANGED_TOAST",
    "Begin",
    "Column",
    "Commit",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Message",
    "Origin",
    "PgOutputError",
    "PrimaryKeepalive",
    "Relation",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TupleData",
    "Type",
    "Update",
    "Value",
    "XLogData",
    "decode_message",
    "lsn_to_str",
    "now_pg_us",
    "parse_copy_data",
    "pg_ts_to_unix_ms",
    "standby_status_update",
    "str_to_lsn",
]

# ---------------------------------------------------------------- helpers

_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")
_TRUNC_HEAD = struct.Struct(">iB")
_MSG_HEAD = struct.Struct(">BQ")
_COL_TAIL = struct.Struct(">Ii")
_STREAM_START = struct.Struct(">IB")
_STREAM_COMMIT = struct.Struct(">IBQQq")
_STREAM_ABORT = struct.Struct(">II")
_STREAM_ABORT4 = struct.Struct(">IIQq")
_XLOG_HEAD = struct.Struct(">QQq")
_KEEPALIVE = struct.Struct(">QqB")
_STATUS = struct.Struct(">QQQqB")

_u32 = _U32.unpack_from
_i32 = _I32.unpack_from
_i16 = _I16.unpack_from

_NAMES: Final = {
    b"B"[0]: "Begin", b"C"[0]: "Commit", b"O"[0]: "Origin", b"R"[0]: "Relation",
    b"Y"[0]: "Type", b"I"[0]: "Insert", b"U"[0]: "Update", b"D"[0]: "Delete",
    b"T"[0]: "Truncate", b"M"[0]: "Message", b"S"[0]: "Stream Start",
    b"E"[0]: "Stream Stop", b"c"[0]: "Stream Commit", b"A"[0]: "Stream Abort",
}
_TEXT, _NULL, _TOAST, _BINARY = b"t"[0], b"n"[0], b"u"[0], b"b"[0]


def _err(kind: str, pos: int, what: str) -> PgOutputError:
    return PgOutputError(f"pgoutput {kind} message: {what} at offset {pos}")


def _cstring(buf: bytes, pos: int, kind: str, what: str) -> tuple[str, int]:
    end = buf.find(b"\0", pos)
    if end < 0:
        raise _err(kind, pos, f"expected NUL-terminated {what}, found end of message")
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError as e:
        raise _err(kind, pos, f"{what} is not valid UTF-8 ({e.reason})") from None


def _xid(buf: bytes, pos: int, in_stream: bool) -> tuple[int | None, int]:
    if in_stream:
        return _u32(buf, pos)[0], pos + 4
    return None, pos


def _tuple(buf: bytes, pos: int, kind: str) -> tuple[TupleData, int]:
    (ncols,) = _i16(buf, pos)
    if ncols < 0:
        raise _err(kind, pos, f"negative column count {ncols}")
    pos += 2
    blen = len(buf)
    values: list[Value] = []
    append = values.append
    for i in range(ncols):
        if pos >= blen:
            raise _err(kind, pos, f"expected column {i + 1} of {ncols}, found end of message")
        k = buf[pos]
        if k == _TEXT:
            (n,) = _i32(buf, pos + 1)
            start = pos + 5
            pos = start + n
            if n < 0 or pos > blen:
                raise _err(kind, start - 4, f"column {i + 1} length {n} exceeds message")
            try:
                append(buf[start:pos].decode())
            except UnicodeDecodeError as e:
                raise _err(kind, start, f"column {i + 1} is not valid UTF-8 ({e.reason})") from None
        elif k == _NULL:
            append(None)
            pos += 1
        elif k == _TOAST:
            append(UNCHANGED_TOAST)
            pos += 1
        elif k == _BINARY:
            (n,) = _i32(buf, pos + 1)
            start = pos + 5
            pos = start + n
            if n < 0 or pos > blen:
                raise _err(kind, start - 4, f"column {i + 1} length {n} exceeds message")
            append(buf[start:pos])
        else:
            raise _err(kind, pos, f"unknown column kind {bytes([k])!r} (expected n, u, t or b)")
    return TupleData(tuple(values)), pos


def _tuple_tagged(buf: bytes, pos: int, kind: str, tag: int) -> tuple[TupleData, int]:
    if pos >= len(buf) or buf[pos] != tag:
        raise _err(kind, pos, f"expected tuple tag {chr(tag)!r}")
    return _tuple(buf, pos + 1, kind)


# ---------------------------------------------------------------- per-kind decoders

_Decoded = tuple[Message, int]


def _begin(buf: bytes, pos: int, s: bool) -> _Decoded:
    lsn, ts, xid = _BEGIN.unpack_from(buf, pos)
    return Begin(lsn, ts, xid), pos + _BEGIN.size


def _commit(buf: bytes, pos: int, s: bool) -> _Decoded:
    flags, lsn, end, ts = _COMMIT.unpack_from(buf, pos)
    return Commit(flags, lsn, end, ts), pos + _COMMIT.size


def _origin(buf: bytes, pos: int, s: bool) -> _Decoded:
    (lsn,) = _U64.unpack_from(buf, pos)
    name, pos = _cstring(buf, pos + 8, "Origin", "origin name")
    return Origin(lsn, name), pos


def _relation(buf: bytes, pos: int, s: bool) -> _Decoded:
    xid, pos = _xid(buf, pos, s)
    (oid,) = _u32(buf, pos)
    namespace, pos = _cstring(buf, pos + 4, "Relation", "namespace")
    name, pos = _cstring(buf, pos, "Relation", "relation name")
    ident = chr(_U8.unpack_from(buf, pos)[0])
    (ncols,) = _i16(buf, pos + 1)
    if ncols < 0:
        raise _err("Relation", pos + 1, f"negative column count {ncols}")
    pos += 3
    columns = []
    for i in range(ncols):
        (flags,) = _U8.unpack_from(buf, pos)
        cname, pos = _cstring(buf, pos + 1, "Relation", f"column {i + 1} name")
        type_oid, typmod = _COL_TAIL.unpack_from(buf, pos)
        pos += 8
        columns.append(Column(bool(flags & 1), cname, type_oid, typmod))
    return Relation(oid, namespace, name, ident, tuple(columns), xid), pos


def _type(buf: bytes, pos: int, s: bool) -> _Decoded:
    xid, pos = _xid(buf, pos, s)
    (oid,) = _u32(buf, pos)
    namespace, pos = _cstring(buf, pos + 4, "Type", "namespace")
    name, pos = _cstring(buf, pos, "Type", "type name")
    return Type(oid, namespace, name, xid), pos


def _insert(buf: bytes, pos: int, s: bool) -> _Decoded:
    xid, pos = _xid(buf, pos, s)
    (oid,) = _u32(buf, pos)
    new, pos = _tuple_tagged(buf, pos + 4, "Insert", 0x4E)  # 'N'
    return Insert(oid, new, xid), pos


def _update(buf: bytes, pos: int, s: bool) -> _Decoded:
    xid, pos = _xid(buf, pos, s)
    (oid,) = _u32(buf, pos)
    pos += 4
    key = old = None
    tag = buf[pos] if pos < len(buf) else -1
    if tag == 0x4B:  # 'K'
        key, pos = _tuple(buf, pos + 1, "Update")
    elif tag == 0x4F:  # 'O'
        old, pos = _tuple(buf, pos + 1, "Update")
    new, pos = _tuple_tagged(buf, pos, "Update", 0x4E)
    return Update(oid, new, key, old, xid), pos


def _delete(buf: bytes, pos: int, s: bool) -> _Decoded:
    xid, pos = _xid(buf, pos, s)
    (oid,) = _u32(buf, pos)
    pos += 4
    tag = buf[pos] if pos < len(buf) else -1
    if tag == 0x4B:
        key, pos = _tuple(buf, pos + 1, "Delete")
        return Delete(oid, key, None, xid), pos
    if tag == 0x4F:
        old, pos = _tuple(buf, pos + 1, "Delete")
        return Delete(oid, None, old, xid), pos
    raise _err("Delete", pos, "expected tuple tag 'K' or 'O'")


def _truncate(buf: bytes, pos: int, s: bool) -> _Decoded:
    xid, pos = _xid(buf, pos, s)
    nrels, options = _TRUNC_HEAD.unpack_from(buf, pos)
    pos += 5
    if nrels < 0 or pos + 4 * nrels > len(buf):
        raise _err("Truncate", pos - 5, f"relation count {nrels} exceeds message")
    oids = struct.unpack_from(f">{nrels}I", buf, pos)
    return Truncate(oids, bool(options & 1), bool(options & 2), xid), pos + 4 * nrels


def _message(buf: bytes, pos: int, s: bool) -> _Decoded:
    xid, pos = _xid(buf, pos, s)
    flags, lsn = _MSG_HEAD.unpack_from(buf, pos)
    prefix, pos = _cstring(buf, pos + 9, "Message", "prefix")
    (n,) = _i32(buf, pos)
    start = pos + 4
    if n < 0 or start + n > len(buf):
        raise _err("Message", pos, f"content length {n} exceeds message")
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[start : start + n], xid), start + n


def _stream_start(buf: bytes, pos: int, s: bool) -> _Decoded:
    xid, first = _STREAM_START.unpack_from(buf, pos)
    return StreamStart(xid, first == 1), pos + _STREAM_START.size


def _stream_stop(buf: bytes, pos: int, s: bool) -> _Decoded:
    return StreamStop(), pos


def _stream_commit(buf: bytes, pos: int, s: bool) -> _Decoded:
    xid, flags, lsn, end, ts = _STREAM_COMMIT.unpack_from(buf, pos)
    return StreamCommit(xid, flags, lsn, end, ts), pos + _STREAM_COMMIT.size


def _stream_abort(buf: bytes, pos: int, s: bool) -> _Decoded:
    if len(buf) - pos >= _STREAM_ABORT4.size:
        xid, subxid, lsn, ts = _STREAM_ABORT4.unpack_from(buf, pos)
        return StreamAbort(xid, subxid, lsn, ts), pos + _STREAM_ABORT4.size
    xid, subxid = _STREAM_ABORT.unpack_from(buf, pos)
    return StreamAbort(xid, subxid), pos + _STREAM_ABORT.size


_DECODERS: Final[dict[int, Callable[[bytes, int, bool], _Decoded]]] = {
    b"B"[0]: _begin, b"C"[0]: _commit, b"O"[0]: _origin, b"R"[0]: _relation,
    b"Y"[0]: _type, b"I"[0]: _insert, b"U"[0]: _update, b"D"[0]: _delete,
    b"T"[0]: _truncate, b"M"[0]: _message, b"S"[0]: _stream_start,
    b"E"[0]: _stream_stop, b"c"[0]: _stream_commit, b"A"[0]: _stream_abort,
}


def decode_message(buf: bytes | bytearray | memoryview, *, in_stream: bool = False) -> Message:
    """Decode one pgoutput message (the payload of one XLogData).

    ``in_stream`` is true between Stream Start and Stream Stop (protocol 2), where data
    messages carry the streamed transaction's xid first.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    if not buf:
        raise PgOutputError("pgoutput: empty message")
    kind = buf[0]
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise PgOutputError(
            f"pgoutput: unknown message kind {bytes([kind])!r} at offset 0 "
            "(expected one of protocol versions 1 and 2)"
        )
    try:
        msg, end = decoder(buf, 1, in_stream)
    except struct.error as e:  # "... requires a buffer of at least N bytes ... at offset M"
        raise PgOutputError(
            f"pgoutput {_NAMES[kind]} message truncated: {e}"
            + (" (inside a stream: xid prefix expected)" if in_stream else "")
        ) from None
    if end != len(buf):
        raise _err(_NAMES[kind], end, f"{len(buf) - end} unexpected trailing byte(s)")
    return msg


# ---------------------------------------------------------------- COPY_BOTH wrapper


def parse_copy_data(buf: bytes | bytearray | memoryview) -> XLogData | PrimaryKeepalive:
    """Parse one CopyData message from the server (``w`` XLogData or ``k`` keepalive).

    The XLogData payload is a zero-copy ``memoryview`` into ``buf``.
    """
    view = memoryview(buf)
    if not view:
        raise PgOutputError("replication: empty CopyData message")
    tag = view[0]
    try:
        if tag == 0x77:  # 'w'
            start, end, clock = _XLOG_HEAD.unpack_from(view, 1)
            return XLogData(start, end, clock, view[1 + _XLOG_HEAD.size :])
        if tag == 0x6B:  # 'k'
            if len(view) != 1 + _KEEPALIVE.size:
                raise PgOutputError(
                    f"replication: keepalive must be {1 + _KEEPALIVE.size} bytes, got {len(view)}"
                )
            end, clock, reply = _KEEPALIVE.unpack_from(view, 1)
            return PrimaryKeepalive(end, clock, reply == 1)
    except struct.error:
        raise PgOutputError(
            f"replication: {chr(tag)!r} message truncated ({len(view)} bytes)"
        ) from None
    raise PgOutputError(
        f"replication: unknown CopyData message {bytes([tag])!r} at offset 0 (expected 'w' or 'k')"
    )


def now_pg_us() -> int:
    """Current time as microseconds since 2000-01-01 UTC (the protocol's clock)."""
    return time.time_ns() // 1000 - PG_EPOCH_OFFSET_US


def standby_status_update(
    written_lsn: int,
    flushed_lsn: int,
    applied_lsn: int,
    reply_requested: bool = False,
    now_us: int | None = None,
) -> bytes:
    """The ``r`` message telling the server how far we have written/flushed/applied."""
    clock = now_pg_us() if now_us is None else now_us
    return b"r" + _STATUS.pack(written_lsn, flushed_lsn, applied_lsn, clock, int(reply_requested))


def pg_ts_to_unix_ms(ts_us: int) -> int:
    """A PostgreSQL timestamp (µs since 2000-01-01 UTC) as Unix milliseconds."""
    return (ts_us + PG_EPOCH_OFFSET_US) // 1000


_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def lsn_to_str(lsn: int) -> str:
    """``0x16B3748`` -> ``'0/16B3748'`` (PostgreSQL's pg_lsn text form)."""
    if not 0 <= lsn <= 0xFFFF_FFFF_FFFF_FFFF:
        raise PgOutputError(f"LSN out of range: {lsn}")
    return f"{lsn >> 32:X}/{lsn & 0xFFFF_FFFF:X}"


def str_to_lsn(text: str) -> int:
    """``'0/16B3748'`` -> ``0x16B3748``; raises :class:`PgOutputError` if malformed."""
    m = _LSN_RE.fullmatch(text)
    if m is None:
        raise PgOutputError(f"malformed LSN {text!r} (expected 'X/Y', 1-8 hex digits each)")
    return (int(m[1], 16) << 32) | int(m[2], 16)
