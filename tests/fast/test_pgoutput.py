"""Tests of the pure pgoutput / replication-protocol decoder.

Three kinds: hand-built byte messages for every kind (protocol 1 and 2, streaming xid
prefix), bytes captured from a real PostgreSQL through
``pg_logical_slot_get_binary_changes`` (protocol 1, and protocol 2 with a transaction
big enough to be streamed), and hypothesis fuzzing (arbitrary and mutated bytes only
ever give a message or :class:`PgOutputError`).
"""

from __future__ import annotations

import contextlib
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_bridge.adapters.postgres.pgoutput import (
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
    decode_message,
    lsn_to_str,
    parse_copy_data,
    pg_ts_to_unix_ms,
    standby_status_update,
    str_to_lsn,
)
from cdc_bridge.kernel.errors import DecodeError
from tests.fast import examples

# ---------------------------------------------------------------- byte builders


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def tup(*values: Value) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED_TOAST:
            out += b"u"
        elif isinstance(v, str):
            out += b"t" + struct.pack(">i", len(v.encode())) + v.encode()
        else:
            assert isinstance(v, bytes)
            out += b"b" + struct.pack(">i", len(v)) + v
    return out


def xid_prefix(xid: int | None) -> bytes:
    return b"" if xid is None else struct.pack(">I", xid)


def relation_msg(xid: int | None = None) -> bytes:
    cols = (
        b"\x01" + cstr("id") + struct.pack(">Ii", 23, -1)
        + b"\x00" + cstr("näme") + struct.pack(">Ii", 1043, 36)
    )
    return (b"R" + xid_prefix(xid) + struct.pack(">I", 16384) + cstr("public") + cstr("orders")
            + b"f" + struct.pack(">h", 2) + cols)


ROW = ("1", None, UNCHANGED_TOAST, b"\x00\xff", "ünï")


def hand_built(xid: int | None) -> list[tuple[bytes, Message]]:
    """(bytes, expected) for every kind that can carry the streaming xid prefix."""
    x = xid_prefix(xid)
    return [
        (relation_msg(xid), Relation(16384, "public", "orders", "f", (
            Column(True, "id", 23, -1), Column(False, "näme", 1043, 36)), xid)),
        (b"Y" + x + struct.pack(">I", 70000) + cstr("public") + cstr("mood"),
         Type(70000, "public", "mood", xid)),
        (b"I" + x + struct.pack(">I", 16384) + b"N" + tup(*ROW),
         Insert(16384, TupleData(ROW), xid)),
        (b"U" + x + struct.pack(">I", 7) + b"N" + tup("a"),
         Update(7, TupleData(("a",)), None, None, xid)),
        (b"U" + x + struct.pack(">I", 7) + b"K" + tup("k", None) + b"N" + tup("a", "b"),
         Update(7, TupleData(("a", "b")), TupleData(("k", None)), None, xid)),
        (b"U" + x + struct.pack(">I", 7) + b"O" + tup("o", "p") + b"N" + tup("a", "b"),
         Update(7, TupleData(("a", "b")), None, TupleData(("o", "p")), xid)),
        (b"D" + x + struct.pack(">I", 7) + b"K" + tup("k"),
         Delete(7, TupleData(("k",)), None, xid)),
        (b"D" + x + struct.pack(">I", 7) + b"O" + tup("k", None),
         Delete(7, None, TupleData(("k", None)), xid)),
        (b"T" + x + struct.pack(">iB", 2, 3) + struct.pack(">II", 5, 4_000_000_000),
         Truncate((5, 4_000_000_000), True, True, xid)),
        (b"T" + x + struct.pack(">iB", 1, 0) + struct.pack(">I", 5),
         Truncate((5,), False, False, xid)),
        (b"M" + x + b"\x01" + struct.pack(">Q", 99) + cstr("app") + struct.pack(">i", 3)
         + b"a\x00b", LogicalMessage(True, 99, "app", b"a\x00b", xid)),
        (b"M" + x + b"\x00" + struct.pack(">Q", 99) + cstr("") + struct.pack(">i", 0),
         LogicalMessage(False, 99, "", b"", xid)),
    ]


UNPREFIXED: list[tuple[bytes, Message]] = [
    (b"B" + struct.pack(">QqI", 0x1_0000_0010, -5, 4_000_000_001),
     Begin(0x1_0000_0010, -5, 4_000_000_001)),
    (b"C" + struct.pack(">BQQq", 0, 10, 20, 30), Commit(0, 10, 20, 30)),
    (b"O" + struct.pack(">Q", 42) + cstr("node_a"), Origin(42, "node_a")),
    (b"S" + struct.pack(">IB", 77, 1), StreamStart(77, True)),
    (b"S" + struct.pack(">IB", 77, 0), StreamStart(77, False)),
    (b"E", StreamStop()),
    (b"c" + struct.pack(">IBQQq", 77, 0, 10, 20, 30), StreamCommit(77, 0, 10, 20, 30)),
    (b"A" + struct.pack(">II", 77, 78), StreamAbort(77, 78)),
    (b"A" + struct.pack(">IIQq", 77, 78, 5, 6), StreamAbort(77, 78, 5, 6)),
]


# ---------------------------------------------------------------- unit tests


@pytest.mark.parametrize(("raw", "expected"), hand_built(None) + UNPREFIXED)
def test_decode_protocol_1(raw: bytes, expected: Message) -> None:
    assert decode_message(raw) == expected
    assert decode_message(memoryview(raw)) == expected
    assert decode_message(bytearray(raw)) == expected


@pytest.mark.parametrize(("raw", "expected"), hand_built(3_000_000_000))
def test_decode_streamed_xid_prefix(raw: bytes, expected: Message) -> None:
    assert decode_message(raw, in_stream=True) == expected


@pytest.mark.parametrize(("raw", "expected"), hand_built(None) + UNPREFIXED)
def test_every_truncation_is_a_clear_error(raw: bytes, expected: Message) -> None:
    for cut in range(len(raw)):
        if isinstance(expected, StreamAbort) and cut == 9:
            continue  # a protocol-4 abort cut after its xids is a valid protocol-2 one
        with pytest.raises(PgOutputError) as e:
            decode_message(raw[:cut])
        assert "pgoutput" in str(e.value)


@pytest.mark.parametrize(("raw", "expected"), hand_built(None) + UNPREFIXED)
def test_trailing_bytes_rejected(raw: bytes, expected: Message) -> None:
    if isinstance(expected, StreamAbort) and expected.abort_lsn is None:
        raw += b"\x00" * 17  # would be read as a protocol-4 abort, then 1 byte extra
    with pytest.raises(PgOutputError, match="trailing"):
        decode_message(raw + b"\x00")


def test_errors_name_kind_offset_and_expectation() -> None:
    assert issubclass(PgOutputError, DecodeError)
    with pytest.raises(PgOutputError, match=r"unknown message kind b'Z' at offset 0"):
        decode_message(b"Z123")
    with pytest.raises(PgOutputError, match="empty"):
        decode_message(b"")
    bad_kind = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"x"
    with pytest.raises(PgOutputError, match=r"Insert.*unknown column kind b'x'.*offset 8"):
        decode_message(bad_kind)
    bad_utf8 = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t\0\0\0\x01\xff"
    with pytest.raises(PgOutputError, match="column 1 is not valid UTF-8"):
        decode_message(bad_utf8)
    too_long = b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t\0\0\0\x09ab"
    with pytest.raises(PgOutputError, match="length 9 exceeds message"):
        decode_message(too_long)
    with pytest.raises(PgOutputError, match="expected tuple tag 'N'"):
        decode_message(b"I" + struct.pack(">I", 1) + b"X" + tup("a"))
    with pytest.raises(PgOutputError, match="expected tuple tag 'K' or 'O'"):
        decode_message(b"D" + struct.pack(">I", 1) + b"N" + tup("a"))
    with pytest.raises(PgOutputError, match="NUL-terminated namespace"):
        decode_message(b"Y" + struct.pack(">I", 1) + b"public")
    with pytest.raises(PgOutputError, match="relation count 1000 exceeds"):
        decode_message(b"T" + struct.pack(">iB", 1000, 0) + b"\0\0\0\1")
    # a streamed message decoded as if outside a stream is misread, never silently
    raw = b"I" + struct.pack(">I", 9) + struct.pack(">I", 16384) + b"N" + tup("1")
    with pytest.raises(PgOutputError):
        decode_message(raw)


def test_copy_data_wrapper() -> None:
    payload = b"B" + struct.pack(">QqI", 1, 2, 3)
    raw = b"w" + struct.pack(">QQq", 100, 200, 300) + payload
    msg = parse_copy_data(raw)
    assert isinstance(msg, XLogData)
    assert (msg.wal_start, msg.wal_end, msg.server_clock_us) == (100, 200, 300)
    assert bytes(msg.payload) == payload
    assert decode_message(msg.payload) == Begin(1, 2, 3)
    ka = parse_copy_data(memoryview(b"k" + struct.pack(">QqB", 0xFFFF_0000_1, 5, 1)))
    assert ka == PrimaryKeepalive(0xFFFF_0000_1, 5, True)
    assert parse_copy_data(b"k" + struct.pack(">QqB", 1, 5, 0)) == PrimaryKeepalive(1, 5, False)
    for bad in (b"", b"w\0\0", b"k" + b"\0" * 10, b"k" + b"\0" * 20, b"x" + b"\0" * 30):
        with pytest.raises(PgOutputError, match="replication"):
            parse_copy_data(bad)


def test_standby_status_update_and_clock() -> None:
    raw = standby_status_update(1, 2, 3, reply_requested=True, now_us=4)
    assert raw == b"r" + struct.pack(">QQQqB", 1, 2, 3, 4, 1)
    before = time.time()
    auto = standby_status_update(5, 5, 5)
    (clock,) = struct.unpack_from(">q", auto, 25)
    assert abs((clock + PG_EPOCH_OFFSET_US) / 1e6 - before) < 5
    assert auto[-1] == 0
    assert pg_ts_to_unix_ms(0) == 946_684_800_000
    assert pg_ts_to_unix_ms(1_500) == 946_684_800_001


def test_lsn_text_round_trip() -> None:
    assert lsn_to_str(0x16B3748) == "0/16B3748"
    assert lsn_to_str(0xA_0000_000B) == "A/B"
    assert str_to_lsn("0/16B3748") == 0x16B3748
    assert str_to_lsn("ffffffff/FFFFFFFF") == 0xFFFF_FFFF_FFFF_FFFF
    for lsn in (0, 1, 0xFFFF_FFFF, 0x1_0000_0000, 0xFFFF_FFFF_FFFF_FFFF):
        assert str_to_lsn(lsn_to_str(lsn)) == lsn
    for bad in ("", "0", "/1", "1/", "0/+1", "0/1_0", " 0/1", "123456789/0", "g/0"):
        with pytest.raises(PgOutputError, match="malformed LSN"):
            str_to_lsn(bad)
    with pytest.raises(PgOutputError):
        lsn_to_str(-1)


# ---------------------------------------------------------------- fuzzing

VALID = [raw for raw, _ in hand_built(None) + UNPREFIXED]
KINDS = sorted({raw[:1] for raw in VALID})


def decodes_or_fails_cleanly(raw: bytes, in_stream: bool) -> None:
    start = time.perf_counter()
    try:
        msg = decode_message(raw, in_stream=in_stream)
    except PgOutputError as e:
        assert str(e)
    else:
        assert type(msg).__module__ == "cdc_bridge.adapters.postgres.pgoutput_messages"
    assert time.perf_counter() - start < 0.5


@settings(max_examples=examples(1500), deadline=1000)
@given(st.binary(max_size=200), st.booleans())
def test_fuzz_arbitrary_bytes(raw: bytes, in_stream: bool) -> None:
    decodes_or_fails_cleanly(raw, in_stream)
    with contextlib.suppress(PgOutputError):
        parse_copy_data(raw)


@settings(max_examples=examples(1500), deadline=1000)
@given(st.sampled_from(KINDS), st.binary(max_size=120), st.booleans())
def test_fuzz_known_kind_with_random_body(kind: bytes, body: bytes, in_stream: bool) -> None:
    decodes_or_fails_cleanly(kind + body, in_stream)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "set"]))
        pos = draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and raw:
            raw[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, *b"ntubNKO"]))
        elif op == "insert":
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del raw[pos : pos + draw(st.integers(1, 8))]
        else:
            del raw[pos:]
    return bytes(raw)


@settings(max_examples=examples(3000), deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.booleans())
def test_fuzz_mutated_valid_messages(raw: bytes, in_stream: bool) -> None:
    decodes_or_fails_cleanly(raw, in_stream)


def test_huge_declared_sizes_fail_fast() -> None:
    # declared column/relation counts and lengths far beyond the buffer: error, no hang
    cases = [
        b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 32767),
        b"I" + struct.pack(">I", 1) + b"N" + struct.pack(">h", 1) + b"t\x7f\xff\xff\xff",
        b"R" + struct.pack(">I", 1) + b"a\0b\0d" + struct.pack(">h", 32767),
        b"T" + struct.pack(">iB", 2**31 - 1, 0),
        b"M\x01" + struct.pack(">Q", 1) + b"p\0" + struct.pack(">i", 2**31 - 1),
    ]
    for raw in cases:
        start = time.perf_counter()
        with pytest.raises(PgOutputError):
            decode_message(raw)
        assert time.perf_counter() - start < 0.1
