"""The pause policy end to end: a breaking change to one PostgreSQL table holds that table's
events in the outbox (through a kill -9 of the bridge and a NATS restart) while another
table keeps flowing; ``cdc-bridge schema accept`` releases them, and nothing is lost,
duplicated or reordered. Also: the registry survives the NATS restart, and
``POST /schema/accept`` answers. Real PostgreSQL, real nats-server, the bridge as a
process."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import nats
import psycopg

from tests.helpers import BridgeProcess, StoredMessage, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.services.postgres import PostgresServer

KEYS = 10


def _fresh_db(pg: PostgresServer) -> str:
    name = f"sch_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg.dsn_for(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc_bridge.cli", *args, "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)


def _kv(url: str, bucket: str) -> dict[str, dict[str, Any]]:
    async def read() -> dict[str, dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(bucket)
            out = {}
            for key in await kv.keys():
                entry = await kv.get(key)
                out[key] = json.loads(entry.value or b"{}")
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def _rows(msgs: list[StoredMessage], table: str) -> list[StoredMessage]:
    return [m for m in msgs if m.subject.startswith(f"cdc.pg.public.{table}.")]


def test_a_breaking_change_pauses_one_table_until_accepted(
        tmp_path: Path, nats_server: NatsServer, postgres_server: PostgresServer) -> None:
    dsn = _fresh_db(postgres_server)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, n int NOT NULL, note text)")
        conn.execute("CREATE TABLE audit (id serial PRIMARY KEY, what text)")
        conn.execute("INSERT INTO orders SELECT g, 0, 'x' FROM generate_series(0, %s) g",
                     (KEYS - 1,))
    port = _free_port()
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc"},
        "http": {"enabled": True, "host": "127.0.0.1", "port": port},
        "adapters": [{"name": "pg", "type": "postgres", "dsn": dsn,
                      "tables": ["public.orders", "public.audit"], "snapshot": "initial",
                      "heartbeat_interval": "1s", "status_interval": "1s",
                      "schema_changes": {"on_breaking": "pause"}}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    url = nats_server.url
    wait_for(lambda: len(_rows(stream_messages(url), "orders")) >= KEYS, timeout_s=60,
             what="the snapshot")
    counts = {"updates": 0, "audit": 0}
    stop = threading.Event()

    def write() -> None:  # one writer: each key's versions commit in order
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("UPDATE orders SET n = n + 1 WHERE id = %s",
                             (counts["updates"] % KEYS,))
                counts["updates"] += 1
                conn.execute("INSERT INTO audit (what) VALUES ('tick')")
                counts["audit"] += 1
                time.sleep(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(1.0)
        with psycopg.connect(dsn, autocommit=True) as conn:  # a rename: breaking
            conn.execute("ALTER TABLE orders RENAME COLUMN note TO memo")

        def schema_v2() -> bool:
            return any(m.body["data"]["new_version"] == 2 for m in
                       stream_messages(url, subject="cdc._schema.pg.public.orders"))

        wait_for(schema_v2, timeout_s=60, what="the schema-change event of v2")
        audit_then = len(_rows(stream_messages(url), "audit"))
        wait_for(lambda: len(_rows(stream_messages(url), "audit")) > audit_then + 20,
                 timeout_s=60, what="audit to keep flowing while orders is paused")
        status = json.loads(_cli(cfg, "status", "--json").stdout)
        orders = next(a for a in status["adapters"] if a["name"] == "pg")["schemas"][
            "public.orders"]
        assert orders["version"] == 2 and orders["paused"] and orders["held"] > 0, orders
        assert "PAUSED" in _cli(cfg, "status").stdout
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b'cdc_table_paused{adapter="pg",table="public.orders"} 1.0' in metrics
        # a kill -9 while paused: still paused after the restart, nothing lost
        bridge.kill9()
        nats_server.restart()
        bridge.start()
        wait_for(lambda: len(_rows(stream_messages(url), "audit")) > audit_then + 60,
                 timeout_s=60, what="audit to flow after the restart")
        listed = json.loads(_cli(cfg, "schema", "list", "--json").stdout)
        row = next(r for r in listed if r["table"] == "public.orders")
        assert row["version"] == 2 and row["paused"] and row["held"] > 0, row
    finally:
        stop.set()
        writer.join()
    stored = stream_messages(url)
    assert all(m.body["data"]["source"].get("schema_version") == 1
               for m in _rows(stored, "orders")), "a v2 row was published while paused"
    registry = _kv(url, "CDC_SCHEMAS")  # survived the NATS restart
    assert {"pg.public.orders.v1", "pg.public.orders.v2", "pg.public.orders.latest",
            "pg.public.audit.v1"} <= set(registry)
    assert registry["pg.public.orders.latest"]["version"] == 2
    assert [c["name"] for c in registry["pg.public.orders.v2"]["columns"]] == [
        "id", "n", "memo"]
    diff = _cli(cfg, "schema", "diff", "pg", "orders")
    assert diff.returncode == 0, diff.stderr
    assert "v1 -> v2: breaking" in diff.stdout and "note renamed to memo" in diff.stdout
    shown = json.loads(_cli(cfg, "schema", "show", "pg", "public.orders", "--version", "1",
                            "--json").stdout)
    assert [c["name"] for c in shown["columns"]] == ["id", "n", "note"]
    assert shown["columns"][1]["nullable"] is False and shown["paused"]
    assert _cli(cfg, "schema", "show", "pg", "nope").returncode == 1
    # accept through the CLI (the running daemon answers)
    done = _cli(cfg, "schema", "accept", "pg", "orders")
    assert done.returncode == 0, done.stderr
    assert "accepted" in done.stdout + done.stderr
    total_orders = KEYS + counts["updates"]
    wait_for(lambda: len(_rows(stream_messages(url), "orders")) >= total_orders,
             timeout_s=60, what="the held orders events")
    req = urllib.request.Request(f"http://127.0.0.1:{port}/schema/accept", method="POST",
                                 data=json.dumps({"adapter": "pg", "table": "orders"}).encode())
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 202 and "id" in json.loads(r.read())
    assert bridge.terminate() == 0
    stored = stream_messages(url, schemas=True)
    orders_msgs = _rows(stored, "orders")
    ids = [m.headers["Nats-Msg-Id"] for m in stored]
    assert len(ids) == len(set(ids)), "a duplicate reached the stream"
    assert len(orders_msgs) == total_orders
    assert len(_rows(stored, "audit")) == counts["audit"]
    per_key: dict[int, list[int]] = {}
    for m in orders_msgs:
        per_key.setdefault(m.body["data"]["after"]["id"], []).append(
            m.body["data"]["after"]["n"])
    with psycopg.connect(dsn) as conn:
        table = dict(conn.execute("SELECT id, n FROM orders").fetchall())
    for key, seen in per_key.items():
        assert seen == list(range(table[key] + 1)), (key, seen)
    # the schema event of v2 is before every v2 row in the stream
    v2_at = next(m.seq for m in stored if m.subject == "cdc._schema.pg.public.orders"
                 and m.body["data"]["new_version"] == 2)
    v2_rows = [m for m in orders_msgs if m.body["data"]["source"]["schema_version"] == 2]
    assert v2_rows and all(m.seq > v2_at for m in v2_rows)
    assert all("memo" in m.body["data"]["after"] for m in v2_rows)
