"""pgoutput bytes captured from a real PostgreSQL, decoded by the pure decoder.

``pg_logical_slot_get_binary_changes`` gives the plugin's own output: protocol 1, and
protocol 2 with a transaction big enough to be streamed. The hand-built and fuzzed
cases of the same decoder are in ``tests/fast/test_pgoutput.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cdc_bridge.adapters.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Column,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Message,
    Origin,
    Relation,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleData,
    Type,
    Update,
    decode_message,
    pg_ts_to_unix_ms,
)
from tests.services.postgres import PostgresServer

# ---------------------------------------------------------------- real captured bytes

DB = "pgoutput_capture"


@pytest.fixture(scope="module")
def capture_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    yield postgres_server.dsn_for(DB)
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def get_changes(conn: psycopg.Connection, slot: str, *options: str) -> list[bytes]:
    sql = (
        "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, "
        + ", ".join(["%s"] * len(options)) + ")"
    )
    return [bytes(r[0]) for r in conn.execute(sql, (slot, *options)).fetchall()]


def one(conn: psycopg.Connection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


def decode_all(raw: list[bytes]) -> list[Message]:
    out: list[Message] = []
    in_stream = False
    for data in raw:
        msg = decode_message(data, in_stream=in_stream)
        if isinstance(msg, StreamStart):
            in_stream = True
        elif isinstance(msg, StreamStop):
            in_stream = False
        out.append(msg)
    return out


def test_real_protocol_1_capture(capture_dsn: str) -> None:
    big = "".join(f"{i:05d}" for i in range(3000))  # 15 kB, stored out of line
    with psycopg.connect(capture_dsn, autocommit=True) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('sad', 'happy')")
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, name text, big text, m mood)")
        conn.execute("ALTER TABLE t ALTER big SET STORAGE EXTERNAL")
        conn.execute("CREATE TABLE f (id int, v text)")
        conn.execute("ALTER TABLE f REPLICA IDENTITY FULL")
        conn.execute("CREATE PUBLICATION pub1 FOR TABLE t, f")
        conn.execute("SELECT pg_create_logical_replication_slot('s1', 'pgoutput')")
        with conn.transaction():
            conn.execute("INSERT INTO t VALUES (1, 'ä', %s, 'happy'), (2, NULL, 'small', NULL)",
                         (big,))
            conn.execute("SELECT pg_logical_emit_message(true, 'app', 'in-tx'::bytea)")
        conn.execute("UPDATE t SET name = 'b' WHERE id = 1")  # big stays TOASTed
        conn.execute("UPDATE t SET id = 10 WHERE id = 2")  # key change: old key sent
        conn.execute("DELETE FROM t WHERE id = 10")
        conn.execute("INSERT INTO f VALUES (1, 'x')")
        conn.execute("UPDATE f SET v = 'y'")
        conn.execute("DELETE FROM f")
        conn.execute("SELECT pg_logical_emit_message(false, 'nontx', '\\x00ff'::bytea)")
        conn.execute("TRUNCATE f")
        conn.execute("SELECT pg_replication_origin_create('upstream')")
        conn.execute("SELECT pg_replication_origin_session_setup('upstream')")
        with conn.transaction():
            conn.execute("SELECT pg_replication_origin_xact_setup('0/ABCD', now())")
            conn.execute("INSERT INTO f VALUES (2, 'from upstream')")
        conn.execute("SELECT pg_replication_origin_session_reset()")
        t_oid, f_oid, mood_oid = one(
            conn, "SELECT 't'::regclass::oid, 'f'::regclass::oid, 'mood'::regtype::oid")
        raw = get_changes(conn, "s1", "proto_version", "1", "publication_names", "pub1",
                          "messages", "true")
    msgs = decode_all(raw)
    kinds = [type(m).__name__ for m in msgs]
    assert kinds[:7] == ["Begin", "Type", "Relation", "Insert", "Insert", "LogicalMessage",
                         "Commit"]
    begin, typ, rel, ins1, ins2, lmsg, commit = msgs[:7]
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.final_lsn == commit.commit_lsn and commit.end_lsn > commit.commit_lsn
    assert begin.commit_ts_us == commit.commit_ts_us
    assert abs(pg_ts_to_unix_ms(commit.commit_ts_us) / 1000 - time.time()) < 120
    assert typ == Type(mood_oid, "public", "mood")
    assert rel == Relation(t_oid, "public", "t", "d", (
        Column(True, "id", 23, -1), Column(False, "name", 25, -1),
        Column(False, "big", 25, -1), Column(False, "m", mood_oid, -1)))
    assert ins1 == Insert(t_oid, TupleData(("1", "ä", big, "happy")))
    assert ins2 == Insert(t_oid, TupleData(("2", None, "small", None)))
    assert isinstance(lmsg, LogicalMessage)
    assert (lmsg.transactional, lmsg.prefix, lmsg.content) == (True, "app", b"in-tx")
    rest = [m for m in msgs[7:] if not isinstance(m, Begin | Commit | Relation)]
    nontx = rest[6]
    assert isinstance(nontx, LogicalMessage) and nontx.lsn > 0
    assert rest == [
        Update(t_oid, TupleData(("1", "b", UNCHANGED_TOAST, "happy"))),
        Update(t_oid, TupleData(("10", None, "small", None)), key=TupleData(("2", None, None,
                                                                            None))),
        Delete(t_oid, key=TupleData(("10", None, None, None))),
        Insert(f_oid, TupleData(("1", "x"))),
        Update(f_oid, TupleData(("1", "y")), old=TupleData(("1", "x"))),
        Delete(f_oid, old=TupleData(("1", "y"))),
        LogicalMessage(False, nontx.lsn, "nontx", b"\x00\xff"),
        Truncate((f_oid,), False, False),
        Origin(0xABCD, "upstream"),
        Insert(f_oid, TupleData(("2", "from upstream"))),
    ]
    f_rel = next(m for m in msgs if isinstance(m, Relation) and m.oid == f_oid)
    assert f_rel.replica_identity == "f"
    assert all(c.is_key for c in f_rel.columns)  # FULL: every column is part of the identity


def test_real_protocol_2_streaming_capture(capture_dsn: str) -> None:
    rows = 3000
    with psycopg.connect(capture_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE s (id int PRIMARY KEY, pad text)")
        conn.execute("CREATE PUBLICATION pub2 FOR TABLE s")
        conn.execute("SELECT pg_create_logical_replication_slot('s2', 'pgoutput')")
        s_oid = one(conn, "SELECT 's'::regclass::oid")
        with conn.transaction():  # big: streamed before its commit
            conn.execute("INSERT INTO s SELECT g, repeat('p', 50) FROM generate_series(1, %s) g",
                         (rows,))
            conn.execute("SELECT pg_logical_emit_message(true, 'big', 'inside')")
            big_xid = one(conn, "SELECT txid_current()")
        with conn.transaction():  # big, with a streamed subtransaction rolled back
            sub_top = one(conn, "SELECT txid_current()")
            conn.execute("INSERT INTO s VALUES (-2, 'kept')")
            with conn.transaction():
                conn.execute(
                    "INSERT INTO s SELECT g, repeat('q', 50) FROM generate_series(20001, %s) g",
                    (20000 + rows,))
                raise psycopg.Rollback()
        conn.execute("INSERT INTO s VALUES (0, 'small')")  # small: not streamed
        with conn.transaction():  # big and rolled back: streamed, then aborted
            conn.execute("INSERT INTO s SELECT g, 'x' FROM generate_series(10001, %s) g",
                         (10000 + rows,))
            aborted_xid = one(conn, "SELECT txid_current()")
            raise psycopg.Rollback()
        conn.execute("INSERT INTO s VALUES (-1, 'after')")  # a commit flushes the abort record
        conn.execute("SET logical_decoding_work_mem = '64kB'")
        raw = get_changes(conn, "s2", "proto_version", "2", "publication_names", "pub2",
                          "streaming", "on", "messages", "true")
    msgs = decode_all(raw)
    starts = [m for m in msgs if isinstance(m, StreamStart)]
    assert starts and starts[0] == StreamStart(big_xid, True)
    assert all(not m.first_segment for m in starts if m.xid == big_xid and m is not starts[0])
    assert sum(isinstance(m, StreamStop) for m in msgs) == len(starts)
    big_inserts = [m for m in msgs if isinstance(m, Insert) and m.xid == big_xid]
    assert [m.new.values for m in big_inserts] == [(str(i), "p" * 50) for i in range(1, rows + 1)]
    assert all(m.relation_oid == s_oid for m in big_inserts)
    streamed_rel = [m for m in msgs if isinstance(m, Relation) and m.xid == big_xid]
    assert streamed_rel and streamed_rel[0].name == "s"
    inside = [m for m in msgs if isinstance(m, LogicalMessage)]
    assert [(m.xid, m.prefix, m.content) for m in inside] == [(big_xid, "big", b"inside")]
    commits = [m for m in msgs if isinstance(m, StreamCommit)]
    assert commits[0].xid == big_xid
    assert commits[0].end_lsn > commits[0].commit_lsn
    small = [m for m in msgs if isinstance(m, Insert) and m.xid is None]
    assert [m.new.values for m in small] == [("0", "small"), ("-1", "after")]
    aborts = [m for m in msgs if isinstance(m, StreamAbort)]
    assert len(aborts) == 2
    assert aborts[0].xid == sub_top and aborts[0].subxid not in (0, sub_top)
    assert aborts[1] == StreamAbort(aborted_xid, aborted_xid)
    sub_commit = [m for m in commits if m.xid == sub_top]
    assert len(sub_commit) == 1
    kept = [m.new.values for m in msgs if isinstance(m, Insert) and m.xid == sub_top]
    assert kept[0] == ("-2", "kept")
    aborted_inserts = [m for m in msgs if isinstance(m, Insert) and m.xid == aborted_xid]
    assert 0 < len(aborted_inserts) <= rows


