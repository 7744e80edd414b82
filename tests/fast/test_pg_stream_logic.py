"""Fast unit tests of the postgres adapter's pure logic (no server).

The streaming loop runs against a scripted in-memory replication connection fed with
real pgoutput bytes (encoded here from the protocol documentation), beside the
real-service tests in ``tests/test_pg_adapter.py`` and ``tests/test_pg_faults.py``.
Covers: batches cut inside a large transaction and the checkpoint that lets a restart
skip exactly what is in the outbox (same ids), transactions already confirmed being
skipped, flush LSNs sent only after acknowledgement, heartbeat messages never becoming
events, the snapshot-resume visibility filter and the checkpoint format.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest

import cdc_bridge.adapters.registry  # noqa: F401  (registry first: it imports the adapters)
from cdc_bridge.adapters.contract import ChangeBatch
from cdc_bridge.adapters.postgres import pgoutput as po
from cdc_bridge.adapters.postgres.changes import EventBuilder
from cdc_bridge.adapters.postgres.config import HEARTBEAT_PREFIX, PostgresConfig
from cdc_bridge.adapters.postgres.position import (
    Position,
    SnapshotFilter,
    SnapshotProgress,
    governing,
)
from cdc_bridge.adapters.postgres.setup import ColumnInfo, TableInfo
from cdc_bridge.adapters.postgres.stream import StreamReader
from cdc_bridge.adapters.postgres.values import ValueDecoder

REL_OID = 16400


def xlog(lsn: int, payload: bytes) -> bytes:
    return b"w" + struct.pack(">QQq", lsn, lsn, 0) + payload


def begin(final_lsn: int, xid: int) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, 0, xid)


def commit(commit_lsn: int, end_lsn: int) -> bytes:
    return b"C" + struct.pack(">BQQq", 0, commit_lsn, end_lsn, 0)


def relation() -> bytes:
    cols = b"".join(struct.pack(">B", flag) + name + b"\0" + struct.pack(">Ii", oid, -1)
                    for flag, name, oid in ((1, b"id", 23), (0, b"v", 25)))
    return (b"R" + struct.pack(">I", REL_OID) + b"public\0t\0d" + struct.pack(">h", 2) + cols)


def insert(i: int) -> bytes:
    def text(s: bytes) -> bytes:
        return b"t" + struct.pack(">i", len(s)) + s
    return (b"I" + struct.pack(">I", REL_OID) + b"N" + struct.pack(">h", 2)
            + text(str(i).encode()) + text(b"v"))


def message(prefix: str, lsn: int) -> bytes:
    return b"M" + struct.pack(">BQ", 0, lsn) + prefix.encode() + b"\0" + struct.pack(">I", 0)


def keepalive(wal_end: int, reply: bool = False) -> bytes:
    return b"k" + struct.pack(">QqB", wal_end, 0, int(reply))


class ScriptedConnection:
    """Stands in for ReplicationConnection: serves scripted CopyData, records replies."""

    def __init__(self, script: list[bytes]) -> None:
        self.script = list(script)
        self.sent: list[bytes] = []
        self.started_at: str | None = None

    async def start(self, slot: str, start_lsn: str, publication: str) -> None:
        self.started_at = start_lsn

    def read_available(self, limit: int = 5000) -> list[bytes]:
        out, self.script = self.script[:limit], self.script[limit:]
        return out

    async def wait_readable(self, timeout_s: float) -> None:
        await asyncio.sleep(min(timeout_s, 0.005))

    async def send(self, data: bytes) -> None:
        self.sent.append(data)

    def flushed(self) -> list[int]:
        return [struct.unpack(">QQQqB", d[1:])[1] for d in self.sent]


def big_tx(n: int, final_lsn: int = 0x5000, xid: int = 700) -> list[bytes]:
    msgs = [xlog(0x1000, begin(final_lsn, xid)), xlog(0x1000, relation())]
    msgs += [xlog(0x1000 + i, insert(i)) for i in range(n)]
    msgs.append(xlog(final_lsn, commit(final_lsn, final_lsn + 0x30)))
    return msgs


def reader(script: list[bytes], pos: Position, **cfg: Any) -> tuple[StreamReader,
                                                                     ScriptedConnection]:
    cfg = {"max_batch_delay": 0.001, "status_interval": 0.05, **cfg}
    config = PostgresConfig(name="shop", type="postgres", dsn="postgresql://x/y",
                            tables=["t"], **cfg)
    table = TableInfo(REL_OID, "public", "t", [ColumnInfo("id", 23, -1),
                                               ColumnInfo("v", 25, -1)], ["id"], "d", 0)
    conn = ScriptedConnection(script)
    builder = EventBuilder("shop", {"public.t": table}, ValueDecoder())
    return StreamReader(config, conn, builder, pos), conn  # type: ignore[arg-type]


async def collect(r: StreamReader, events: int, ack: bool = True) -> list[ChangeBatch]:
    out: list[ChangeBatch] = []
    gen = r.batches()
    async for batch in gen:
        out.append(batch)
        if ack:
            r.acknowledge(po.str_to_lsn(batch.checkpoint["lsn"]))  # type: ignore[index]
        if sum(len(b.events) for b in out) >= events and batch.checkpoint and \
                batch.checkpoint["tx"] is None:
            break
    await gen.aclose()  # type: ignore[attr-defined]
    return out


async def test_large_transaction_is_cut_into_batches_and_resumes_exactly() -> None:
    # cuts by size, not by a delay (1 s: far longer than a loaded machine pauses)
    r, conn = reader(big_tx(5000), Position(lsn=0x100), batch_size=2000, max_batch_delay=1.0)
    batches = await collect(r, 5000)
    sizes = [len(b.events) for b in batches if b.events]
    assert sizes == [2000, 2000, 1000]
    mid = batches[1].checkpoint
    assert mid is not None
    assert mid["lsn"] == "0/100"  # the slot stays before the unfinished transaction
    assert mid["tx"] == {"lsn": "0/5000", "done": 4000}
    assert batches[-1].checkpoint is not None
    assert batches[-1].checkpoint["lsn"] == "0/5030" and batches[-1].checkpoint["tx"] is None
    first_ids = [e.id for b in batches for e in b.events]
    assert len(set(first_ids)) == 5000
    # flushes never pass what was acknowledged, and reach the end once all is acked
    assert max(conn.flushed()) <= 0x5030
    # a restart from the middle checkpoint: the server resends the whole transaction
    r2, conn2 = reader(big_tx(5000), Position.from_checkpoint(mid) or Position(),
                       batch_size=2000)
    again = await collect(r2, 1000)
    assert conn2.started_at == "0/100"
    replayed = [e.id for b in again for e in b.events]
    assert replayed == first_ids[4000:], "exactly the changes not yet in the outbox"
    assert next(e.index for b in again for e in b.events) == 4000


async def test_confirmed_transactions_are_skipped() -> None:
    script = big_tx(3, final_lsn=0x2000) + big_tx(2, final_lsn=0x3000, xid=701)
    r, _ = reader(script, Position(lsn=0x2030))
    batches = await collect(r, 2)
    events = [e for b in batches for e in b.events]
    assert [e.after["id"] for e in events if e.after] == [0, 1]
    assert {e.position for e in events} == {"0/3000"} and {e.txid for e in events} == {701}


async def test_heartbeat_message_and_keepalive_advance_flush_when_idle() -> None:
    script = [xlog(0x7000, message(HEARTBEAT_PREFIX, 0x7000)), keepalive(0x7100, reply=True)]
    r, conn = reader(script, Position(lsn=0x100))
    gen = r.batches()
    task = asyncio.ensure_future(gen.__anext__())
    for _ in range(100):
        await asyncio.sleep(0.01)
        if conn.flushed() and conn.flushed()[-1] == 0x7100:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.flushed()[-1] == 0x7100, "idle: the keepalive's WAL end is confirmed"


async def test_unacknowledged_batch_is_not_flushed() -> None:
    r, conn = reader(big_tx(10, final_lsn=0x9000), Position(lsn=0x100))
    batches = await collect(r, 10, ack=False)
    assert batches
    assert all(f <= 0x100 for f in conn.flushed()), "flushed past an unacknowledged batch"


def test_snapshot_filter_visibility_and_wraparound() -> None:
    f = SnapshotFilter.from_snapshot("100:110:103,105", "0/500")
    assert f.visible(100) and f.visible(104) and f.visible(109)
    assert not f.visible(103) and not f.visible(105)  # in progress at the snapshot
    assert not f.visible(110) and not f.visible(200)  # started after it
    wrapped = SnapshotFilter.from_snapshot(f"{2**32 - 5}:{2**32 + 5}:", "0/1")
    assert wrapped.visible((2**32 - 2) & 0xFFFFFFFF) and wrapped.visible(3)
    assert not wrapped.visible(6)


def test_governing_filter_picks_the_latest_range_below_the_key() -> None:
    f1 = SnapshotFilter(10, frozenset(), 0x100, {"public.t": ["100"], "public.u": None})
    f2 = SnapshotFilter(20, frozenset(), 0x200, {"public.t": ["500"]})

    def key_of(texts: list[str]) -> tuple[int, ...]:
        return (int(texts[0]),)

    assert governing([f1, f2], "public.t", (50,), key_of) is None  # copied exactly
    assert governing([f1, f2], "public.t", (300,), key_of) is f1
    assert governing([f1, f2], "public.t", (501,), key_of) is f2
    assert governing([f1, f2], "public.u", None, key_of) is f1
    assert governing([f1, f2], "public.v", (1,), key_of) is None


def test_checkpoint_round_trip() -> None:
    pos = Position(lsn=0x16B3748, tx_lsn=0x16B4000, tx_done=42,
                   snapshot=SnapshotProgress(2, 1, ["public.a", "public.b"], ["public.a"],
                                             "public.b", ["17"], 900),
                   filters=[SnapshotFilter(5, frozenset({3}), 0x2000, {"public.b": ["9"]})],
                   gen=2)
    raw = pos.to_checkpoint()
    assert raw["lsn"] == "0/16B3748" and raw["tx"] == {"lsn": "0/16B4000", "done": 42}
    back = Position.from_checkpoint(raw)
    assert back is not None and back.to_checkpoint() == raw
    assert Position.from_checkpoint(None) is None
    pos.retire_filters(0x2000)
    assert pos.filters == []


# ---------------------------------------------------------------- outbox tables

OUTBOX_OID = 16500
OUTBOX_COLS = (("seq", 20), ("id", 2950), ("aggregate_type", 25), ("aggregate_id", 25),
               ("event_type", 25), ("payload", 3802), ("headers", 3802),
               ("created_at", 1184), ("published_at", 1184))


def outbox_relation() -> bytes:
    cols = b"".join(struct.pack(">B", int(name == "seq")) + name.encode() + b"\0"
                    + struct.pack(">Ii", oid, -1) for name, oid in OUTBOX_COLS)
    return (b"R" + struct.pack(">I", OUTBOX_OID) + b"public\0cdc_outbox\0d"
            + struct.pack(">h", len(OUTBOX_COLS)) + cols)


def _tuple(values: list[str | None]) -> bytes:
    out = struct.pack(">h", len(values))
    for v in values:
        out += b"n" if v is None else b"t" + struct.pack(">i", len(v.encode())) + v.encode()
    return out


def outbox_row(n: int, agg: str | None = "order", payload: str = '{"n": 1.50}'
               ) -> list[str | None]:
    return [str(n), f"00000000-0000-4000-8000-{n:012d}", agg, str(n % 3), "created",
            payload, '{"Trace-Id": "t", "Nats-Msg-Id": "forged"}',
            "2024-05-01 12:00:00.123456+02", None]


def outbox_insert(values: list[str | None]) -> bytes:
    return b"I" + struct.pack(">I", OUTBOX_OID) + b"N" + _tuple(values)


def outbox_reader(script: list[bytes], pos: Position, **cfg: Any) -> StreamReader:
    config = PostgresConfig(name="shop", type="postgres", dsn="postgresql://x/y",
                            tables=["t"], outbox_tables=["cdc_outbox"], max_batch_delay=0.001,
                            status_interval=0.05, **cfg)
    table = TableInfo(REL_OID, "public", "t", [ColumnInfo("id", 23, -1),
                                               ColumnInfo("v", 25, -1)], ["id"], "d", 0)
    outbox = TableInfo(OUTBOX_OID, "public", "cdc_outbox",
                       [ColumnInfo(n, o, -1) for n, o in OUTBOX_COLS], ["seq"], "d", 0)
    builder = EventBuilder("shop", {"public.t": table}, ValueDecoder(),
                           {"public.cdc_outbox": outbox})
    return StreamReader(config, ScriptedConnection(script), builder,  # type: ignore[arg-type]
                        pos)


def outbox_tx(final_lsn: int = 0x8000, xid: int = 900) -> list[bytes]:
    """Row inserts interleaved with outbox inserts, outbox updates, deletes, a truncate
    and malformed outbox rows, in one transaction (18 changes)."""
    body = [relation(), outbox_relation()]
    for i in range(6):
        body += [insert(i), outbox_insert(outbox_row(i))]
    row1 = _tuple(outbox_row(1))
    body += [b"U" + struct.pack(">I", OUTBOX_OID) + b"N" + row1,
             b"D" + struct.pack(">I", OUTBOX_OID) + b"K" + row1,
             b"T" + struct.pack(">IBI", 1, 0, OUTBOX_OID),
             outbox_insert(outbox_row(6, agg="")),
             outbox_insert(outbox_row(7, payload="not json")),
             outbox_insert(outbox_row(8))]
    msgs = [xlog(0x1000, begin(final_lsn, xid))]
    msgs += [xlog(0x1000 + i, m) for i, m in enumerate(body)]
    msgs.append(xlog(final_lsn, commit(final_lsn, final_lsn + 0x30)))
    return msgs


async def test_outbox_inserts_become_messages_counted_as_changes_of_their_transaction(
        ) -> None:
    r = outbox_reader(outbox_tx(), Position(lsn=0x100), batch_size=4)
    batches = await collect(r, 6)
    events = [e for b in batches for e in b.events]
    msgs = [m for b in batches for m in b.messages]
    dead = [d for b in batches for d in b.dead_letters]
    assert [e.after["id"] for e in events if e.after] == list(range(6))
    assert {e.table for e in events} == {"t"}, "outbox rows are not row-change events"
    assert [m.id[-2:] for m in msgs] == ["00", "01", "02", "03", "04", "05", "08"]
    first = msgs[0]
    assert first.subject == "outbox.order.created"
    assert first.headers == {"Trace-Id": "t"}
    assert b'"data":{"n": 1.50}' in first.body, "the payload's text, digits kept"
    assert b'"time":"2024-05-01T10:00:00.123Z"' in first.body
    assert sorted(d.reason for d in dead) == ["public.cdc_outbox: aggregate_type is empty",
                                              "public.cdc_outbox: payload is not JSON"]
    # batches are cut on events + messages; ``done`` counts every change so far
    assert [len(b.events) + len(b.messages) for b in batches if b.events or b.messages] \
        == [4, 4, 4, 1]
    mid = batches[1].checkpoint
    assert mid is not None and mid["tx"] == {"lsn": "0/8000", "done": 8}
    # a restart from there: the server resends the whole transaction, the first 8 of its
    # changes are skipped, nothing after them is
    r2 = outbox_reader(outbox_tx(), Position.from_checkpoint(mid) or Position(),
                       batch_size=4)
    again = await collect(r2, 2)
    assert [m.id for b in again for m in b.messages] == [m.id for m in msgs[4:]]
    assert [e.after["id"] for b in again for e in b.events if e.after] == [4, 5]
    assert sorted(d.id for b in again for d in b.dead_letters) == sorted(d.id for d in dead)
    last = again[-1].checkpoint
    assert last is not None and last["lsn"] == "0/8030" and last["tx"] is None


def test_drift_while_away_from_the_checkpoint_and_the_catalogue_before_the_start() -> None:
    from cdc_bridge.adapters.postgres.tables import Seen, drift_while_away

    before = {"public.a": Seen(10, True), "public.b": Seen(20, False),
              "public.c": Seen(31, False), "public.d": Seen(40, True)}
    known = {"public.a": 10, "public.b": 20, "public.c": 30}  # d: a checkpoint without it
    now = {"public.a": 10, "public.b": 20, "public.c": 31, "public.d": 40}
    assert drift_while_away(known, before, now) == [("public.b", "unpublished"),
                                                    ("public.c", "recreated")]
    assert drift_while_away({}, {}, now) == []  # an old checkpoint, nothing looked at
