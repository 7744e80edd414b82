"""``type: postgres`` end to end: real PostgreSQL 15 -> bridge process -> real JetStream.

Every op kind (``r`` ``c`` ``u`` ``d`` ``t``) and the listed value types, column masking
and exclusion, key-only and full ``before`` images, TOAST placeholders, a table without
a primary key, a snapshot racing concurrent writes, the idle heartbeat moving the slot.
Fault tests (kill -9, PostgreSQL restart, snapshot resume) are in
``tests/test_pg_faults.py``; they reuse the helpers here.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cdc_bridge.kernel.events import event_id
from tests.helpers import (  # stream_count/stream_messages: other test modules take them here
    BridgeProcess,
    StoredMessage,
    stream_count,
    stream_messages,
    wait_for,
    write_config,
)
from tests.services.nats_server import NatsServer
from tests.services.postgres import PostgresServer


@pytest.fixture
def pg_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of the test's own on the session server (dropped with its slot)."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.dsn_for(name)
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots "
                                    "WHERE database = %s", (name,)).fetchall():
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
            time.sleep(0.2)
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def sql(dsn: str, *statements: str, params: Any = None) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for st in statements:
            cur = conn.execute(st, params)
            if cur.description:
                rows = cur.fetchall()
    return rows


def pg_config(tmp: Path, nats_url: str, dsn: str, **adapter: Any) -> Path:
    block: dict[str, Any] = {"name": "shop", "type": "postgres", "dsn": dsn,
                             "heartbeat_interval": "1s", "status_interval": "1s", **adapter}
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc", "ack_timeout": "5s"},
        "adapters": [block],
    })


def wait_stable(url: str, at_least: int, timeout_s: float = 90.0) -> int:
    """Wait until the stream holds ``at_least`` messages and stops growing for 1.5 s."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = stream_count(url)
        if n != last:
            last, since = n, time.monotonic()
        elif n >= at_least and time.monotonic() - since >= 1.5:
            return n
        time.sleep(0.2)
    raise AssertionError(f"stream holds {last} messages, expected at least {at_least}")


def changes(msgs: list[StoredMessage]) -> list[dict[str, Any]]:
    return [m.body["data"] for m in msgs if m.subject.startswith("cdc.shop.")]


def wait_count(url: str, n: int, timeout_s: float = 60.0,
               subject: str = "cdc.shop.>") -> list[StoredMessage]:
    got: list[StoredMessage] = wait_for(
        lambda: (m := stream_messages(url, subject=subject)) and len(m) >= n and m,
        timeout_s=timeout_s, what=f"{n} events")
    return got


def fold(events: list[dict[str, Any]], table: str, key: str = "id") -> dict[Any, dict[str, Any]]:
    """Apply events in stream order: the state a consumer would hold."""
    state: dict[Any, dict[str, Any]] = {}
    for d in events:
        if d["source"]["table"] != table:
            continue
        if d["op"] in ("c", "u", "r"):
            state[d["after"][key]] = d["after"]
        elif d["op"] == "d":
            state.pop(d["before"][key], None)
        elif d["op"] == "t":
            state.clear()
    return state


@pytest.fixture
def bridge_runner(tmp_path: Path) -> Iterator[list[BridgeProcess]]:
    procs: list[BridgeProcess] = []
    yield procs
    for p in procs:
        if p.alive():
            p.kill9()


def start_bridge(procs: list[BridgeProcess], cfg: Path, log: Path) -> BridgeProcess:
    bridge = BridgeProcess(cfg, log)
    bridge.start()
    procs.append(bridge)
    return bridge


TYPES_DDL = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)",
    """CREATE TABLE items (
        id bigint PRIMARY KEY, qty int, price numeric(12,4), name text, note varchar(20),
        ok boolean, at timestamptz, day date, blob bytea, uid uuid, doc jsonb,
        tags int[], m mood, p posint, ratio float8, email text, secret text)""",
]


def test_ops_and_types_end_to_end(tmp_path: Path, nats_server: NatsServer, pg_dsn: str,
                                  bridge_runner: list[BridgeProcess]) -> None:
    sql(pg_dsn, *TYPES_DDL)
    sql(pg_dsn, "INSERT INTO items VALUES (1, 5, 12.5000, 'snap', 'n', true, "
        "'2024-01-31 13:45:00.123+02', '2024-01-31', '\\x00ff', "
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2.5]}', '{1,2,NULL}', 'happy', "
        "7, 0.25, 'x@example.com', 's')")
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=[
        {"name": "public.items",
         "columns": {"exclude": ["secret"], "mask": ["email"], "mask_salt": "pepper"}}])
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge.log")
    wait_count(nats_server.url, 1)
    sql(pg_dsn,
        "INSERT INTO items (id, qty, price, name, email) VALUES (2, 1, 99999999.0001, 'é✓', "
        "'y@example.com')",
        "UPDATE items SET qty = 6, name = 'upd' WHERE id = 1",
        "UPDATE items SET id = 3 WHERE id = 2",
        "DELETE FROM items WHERE id = 1",
        "TRUNCATE items")
    msgs = wait_count(nats_server.url, 6)
    assert bridge.alive(), bridge.log()
    ops = [(m.subject, m.body["data"]["op"]) for m in msgs]
    assert ops == [("cdc.shop.public.items.r", "r"), ("cdc.shop.public.items.c", "c"),
                   ("cdc.shop.public.items.u", "u"), ("cdc.shop.public.items.u", "u"),
                   ("cdc.shop.public.items.d", "d"), ("cdc.shop.public.items.t", "t")]
    snap = msgs[0].body["data"]["after"]
    assert snap["id"] == 1 and snap["qty"] == 5
    assert snap["price"] == "12.5000"
    assert snap["ok"] is True
    assert snap["at"] == "2024-01-31T11:45:00.123000Z"
    assert snap["day"] == "2024-01-31"
    assert base64.b64decode(snap["blob"]) == b"\x00\xff"
    assert snap["uid"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
    assert snap["doc"] == {"a": [1, 2.5]}
    assert snap["tags"] == [1, 2, None]
    assert snap["m"] == "happy" and snap["p"] == 7 and snap["ratio"] == 0.25
    assert "secret" not in snap
    assert snap["email"].startswith("sha256:") and "example" not in snap["email"]
    ins = msgs[1].body["data"]
    assert ins["after"]["price"] == "99999999.0001" and ins["after"]["name"] == "é✓"
    assert ins["before"] is None and ins["key"] == {"id": 2}
    upd = msgs[2].body["data"]
    assert upd["before"] == {"id": 1}  # key-only before image by default
    assert upd["after"]["qty"] == 6 and upd["after"]["name"] == "upd"
    moved = msgs[3].body["data"]
    assert moved["before"] == {"id": 2} and moved["key"] == {"id": 3}
    dele = msgs[4].body["data"]
    assert dele["before"] == {"id": 1} and dele["after"] is None and dele["key"] == {"id": 1}
    trunc = msgs[5].body["data"]
    assert trunc["before"] is None and trunc["after"] is None and trunc["key"] is None
    # one transaction per statement: position = commit LSN, index = order in it
    for m in msgs[1:]:
        d = m.body["data"]
        src = d["source"]
        assert src["schema"] == "public" and src["table"] == "items"
        assert isinstance(src["txid"], int) and src["ts_ms"] > 1_700_000_000_000
        assert src["index"] == 0 and src["snapshot"] is False
        assert m.body["id"] == event_id("shop", src["position"], 0) == m.headers["Nats-Msg-Id"]
        assert "/" in src["lsn"] and "/" in src["position"]
    assert msgs[0].body["data"]["source"]["snapshot"] is True
    assert bridge.terminate() == 0, bridge.log()


def test_multi_change_transaction_order_and_ids(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str,
        bridge_runner: list[BridgeProcess]) -> None:
    sql(pg_dsn, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["t"])
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge.log")
    wait_for(lambda: "streaming from slot" in bridge.log(), what="streaming")
    with psycopg.connect(pg_dsn) as conn:  # one transaction
        conn.execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 5) g")
        conn.execute("UPDATE t SET v = 'w' WHERE id = 3")
        row = conn.execute("SELECT txid_current()").fetchone()
        assert row is not None
        xid = row[0]
    msgs = wait_count(nats_server.url, 6)
    datas = changes(msgs)
    assert [d["source"]["index"] for d in datas] == [0, 1, 2, 3, 4, 5]
    assert {d["source"]["position"] for d in datas} == {datas[0]["source"]["position"]}
    assert {d["source"]["txid"] for d in datas} == {xid}
    assert [d["op"] for d in datas] == ["c"] * 5 + ["u"]
    assert bridge.terminate() == 0


def test_keyless_table_and_toast(tmp_path: Path, nats_server: NatsServer, pg_dsn: str,
                                 bridge_runner: list[BridgeProcess]) -> None:
    sql(pg_dsn, "CREATE TABLE logs (line text, n int)",
        "ALTER TABLE logs REPLICA IDENTITY FULL",
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text)",
        "ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL")
    big = "".join(f"{i:08d}" for i in range(20_000))  # 160 kB: stored out of line (TOAST)
    sql(pg_dsn, "INSERT INTO logs VALUES ('a', 1), ('b', 2)")
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["public.logs", "public.docs"])
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge.log")
    wait_count(nats_server.url, 2)
    sql(pg_dsn, "UPDATE logs SET n = 3 WHERE line = 'b'", "DELETE FROM logs WHERE line = 'a'")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO docs VALUES (1, 't', %s)", (big,))
        conn.execute("UPDATE docs SET title = 't2' WHERE id = 1")
    msgs = wait_count(nats_server.url, 6)
    by = [(m.body["data"]["source"]["table"], m.body["data"]) for m in msgs]
    logs = [d for t, d in by if t == "logs"]
    docs = [d for t, d in by if t == "docs"]
    assert [d["op"] for d in logs] == ["r", "r", "u", "d"]
    assert all(d["key"] is None for d in logs)  # no key: ordered per table
    assert logs[2]["before"] == {"line": "b", "n": 2}  # REPLICA IDENTITY FULL: whole row
    assert logs[2]["after"] == {"line": "b", "n": 3}
    assert logs[3]["before"] == {"line": "a", "n": 1}
    assert msgs[0].body["partitionkey"] == "public.logs"
    assert [d["op"] for d in docs] == ["c", "u"]
    assert docs[0]["after"]["body"] == big
    # the unchanged TOASTed value is not sent by the server: a placeholder, never null
    assert docs[1]["after"] == {"id": 1, "title": "t2",
                                "body": "__cdc_bridge_unchanged_toast__"}
    assert bridge.terminate() == 0


def test_snapshot_with_concurrent_writes_no_gaps_no_doubles(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str,
        bridge_runner: list[BridgeProcess]) -> None:
    """Serial writes v = 1, 2, ... race the snapshot. Writes up to some k must show in the
    ``r`` rows only, writes after k exactly once each, in order, as c/u/d events."""
    n = 20_000
    sql(pg_dsn, "CREATE TABLE acc (id int PRIMARY KEY, balance int)",
        f"INSERT INTO acc SELECT g, 0 FROM generate_series(1, {n}) g")
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["acc"],
                    snapshot_chunk_size=500)
    ops: list[tuple[int, str, int]] = []  # (version, kind, id)
    log_path = tmp_path / "bridge.log"

    def writer() -> None:
        """Writes span bridge start-up, slot creation and the copy, however slow they are:
        it goes on until the snapshot has started, then 1500 more, ending on a delete."""
        extra: int | None = None
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            v = 0
            while extra is None or v < extra or v % 25:
                v += 1
                time.sleep(0.001)
                if extra is None and v % 50 == 0 and log_path.exists() and \
                        "snapshot gen 1" in log_path.read_text(errors="replace"):
                    extra = v + 1500
                if v % 25 == 0:
                    conn.execute("DELETE FROM acc WHERE id = %s", (v,))
                    ops.append((v, "d", v))
                elif v % 10 == 0:
                    conn.execute("INSERT INTO acc VALUES (%s, %s)", (n + v, v))
                    ops.append((v, "c", n + v))
                else:
                    k = (v * 7919) % n + 1
                    cur = conn.execute("UPDATE acc SET balance = %s WHERE id = %s", (v, k))
                    if cur.rowcount:  # not a row deleted before
                        ops.append((v, "u", k))

    thread = threading.Thread(target=writer)
    thread.start()
    bridge = start_bridge(bridge_runner, cfg, log_path)
    thread.join()
    LAST = ops[-1][0]
    assert ops[-1][1] == "d"
    final = {r[0]: r[1] for r in sql(pg_dsn, "SELECT id, balance FROM acc")}
    deleted_version = {i: v for v, kind, i in ops if kind == "d"}

    def settled() -> list[dict[str, Any]] | None:
        datas = changes(stream_messages(nats_server.url, subject="cdc.shop.>"))
        streamed = [d for d in datas if d["op"] != "r"]
        if not streamed or _version(streamed[-1], deleted_version) != LAST:
            return None
        return datas

    datas = wait_for(settled, timeout_s=90, what="the last write")
    reads = [d["after"] for d in datas if d["op"] == "r"]
    streamed = [d for d in datas if d["op"] != "r"]
    assert datas[: len(reads)] == [d for d in datas if d["op"] == "r"], "reads come first"
    versions = [_version(d, deleted_version) for d in streamed]
    k = versions[0] - 1
    assert 0 < k < LAST, "the writes raced the snapshot"
    assert versions == [v for v, _, _ in ops if v > k], "no gap, no double, in commit order"
    assert len({r["id"] for r in reads}) == len(reads), "each row read once"
    assert max(r["balance"] for r in reads) <= k, "no write after the slot in the reads"
    read_ids = {r["id"] for r in reads}
    for v, kind, i in ops:
        if v <= k:
            assert (i in read_ids) == (kind != "d") or kind == "u", (v, kind, i)
        elif kind == "c":
            assert i not in read_ids
    assert {i: r["balance"] for i, r in fold(datas, "acc").items()} == final
    assert "rows/s" in bridge.log()
    assert bridge.terminate() == 0


def _version(d: dict[str, Any], deleted_version: dict[int, int]) -> int:
    if d["op"] == "d":
        return deleted_version[d["before"]["id"]]
    return int(d["after"]["balance"])


def test_idle_heartbeat_advances_confirmed_flush(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str,
        bridge_runner: list[BridgeProcess]) -> None:
    sql(pg_dsn, "CREATE TABLE quiet (id int PRIMARY KEY)", "CREATE TABLE busy (id int)")
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["quiet"],
                    heartbeat_interval="500ms")
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge.log")
    wait_for(lambda: "streaming from slot" in bridge.log(), what="streaming")
    # WAL the slot does not publish (another table), then the captured table stays idle
    sql(pg_dsn, "INSERT INTO busy SELECT generate_series(1, 20000)")
    target = sql(pg_dsn, "SELECT pg_current_wal_lsn()")[0][0]

    def flushed_past() -> bool:
        rows = sql(pg_dsn, "SELECT confirmed_flush_lsn >= %s FROM pg_replication_slots "
                   "WHERE slot_name = 'cdc_bridge_shop'", params=(target,))
        return bool(rows and rows[0][0])

    wait_for(flushed_past, timeout_s=20, what="confirmed_flush_lsn past the idle WAL")
    # no writes at all now: only heartbeats make WAL (besides the server's own records
    # every 15 s), and the slot follows them
    start = sql(pg_dsn, "SELECT confirmed_flush_lsn FROM pg_replication_slots "
                "WHERE slot_name = 'cdc_bridge_shop'")[0][0]
    wait_for(lambda: sql(pg_dsn, "SELECT confirmed_flush_lsn > %s, pg_current_wal_lsn() > %s "
                         "FROM pg_replication_slots WHERE slot_name = 'cdc_bridge_shop'",
                         params=(start, start)) == [(True, True)],
             timeout_s=30, interval_s=0.5, what="heartbeats moving the idle slot")
    assert "heartbeat failed" not in bridge.log()
    assert stream_messages(nats_server.url, subject="cdc.shop.>") == []  # no heartbeat events
    assert bridge.terminate() == 0


def test_partitioned_table_publishes_under_the_parent_name(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str) -> None:
    """Changes of every partition, one attached while the bridge runs included, carry
    the configured parent's name; a publication created earlier without
    publish_via_partition_root is fixed (managed) with a line saying so."""
    sql(pg_dsn,
        "CREATE TABLE parted (id int, region text, v text, PRIMARY KEY (id, region))"
        " PARTITION BY LIST (region)",
        "CREATE TABLE parted_eu PARTITION OF parted FOR VALUES IN ('eu')",
        "CREATE TABLE parted_us PARTITION OF parted FOR VALUES IN ('us')",
        "INSERT INTO parted VALUES (1, 'eu', 'a'), (2, 'us', 'b')",
        # as an operator would have made it by hand: partitions under their own names
        "CREATE PUBLICATION cdc_shop FOR TABLE parted")
    assert sql(pg_dsn, "SELECT pubviaroot FROM pg_publication WHERE pubname = 'cdc_shop'") \
        == [(False,)]
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["public.parted"],
                    publication="cdc_shop")
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_count(nats_server.url, 2)
        sql(pg_dsn, "INSERT INTO parted VALUES (3, 'eu', 'c'), (4, 'us', 'd')",
            "UPDATE parted SET v = 'b2' WHERE id = 2",
            "CREATE TABLE parted_ap (LIKE parted INCLUDING ALL)",
            "ALTER TABLE parted ATTACH PARTITION parted_ap FOR VALUES IN ('ap')",
            "INSERT INTO parted VALUES (5, 'ap', 'e')",
            "DELETE FROM parted WHERE id = 1")
        msgs = wait_count(nats_server.url, 7)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    data = changes(msgs)
    assert {d["source"]["table"] for d in data} == {"parted"}, data
    assert [(d["op"], (d["after"] or d["before"])["id"]) for d in data] == [
        ("r", 1), ("r", 2), ("c", 3), ("c", 4), ("u", 2), ("c", 5), ("d", 1)]
    assert {m.subject.rsplit(".", 2)[0] for m in msgs} == {"cdc.shop.public"}
    assert fold(data, "parted") == {2: {"id": 2, "region": "us", "v": "b2"},
                                    3: {"id": 3, "region": "eu", "v": "c"},
                                    4: {"id": 4, "region": "us", "v": "d"},
                                    5: {"id": 5, "region": "ap", "v": "e"}}
    assert "publish_via_partition_root set" in bridge.log()
    assert sql(pg_dsn, "SELECT pubviaroot FROM pg_publication WHERE pubname = 'cdc_shop'") \
        == [(True,)]
