"""Partial backfills: ``cdc-bridge snapshot ADAPTER TABLE --where EXPR`` and ``POST /snapshot``
with a ``where``, on real servers (PostgreSQL, MariaDB, SQLite, nats-server; the bridge
and the CLI as real processes).

* postgres: a backfill of ``region = 'eu'`` while a writer updates rows of both regions,
  with a ``kill -9`` of the bridge in the middle (small chunks): only eu rows come as
  ``r``, each once per attempt and every eu row at least once; per key, versions never
  go back in stream order and no ``r`` follows a delete; folding the stream gives the
  table; the run resumes with its where. Then the same over HTTP, and bad requests:
  an expression that does not parse (exit 2, its column and a caret; HTTP 400), ``op``
  in a where, a column the table lacks (the adapter refuses).
* mysql_binlog: one backfill during live writes, with the same checks.
* sql_poll: an ``incrementing`` and a ``diff`` table with a where; the diff pass reads
  only matching rows and deletes nothing it did not read (rows outside the where stay),
  the next normal pass finds the rest. A ``files`` adapter refuses ``--where`` clearly.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from tests.harnesses import unique
from tests.harnesses.mysql_binlog import run_sql
from tests.helpers import (
    BridgeProcess,
    committed_checkpoint,
    stream_count,
    stream_messages,
    wait_for,
    write_config,
)
from tests.services.mariadb import MariaDBServer
from tests.services.nats_server import NatsServer
from tests.test_pg_adapter import (
    bridge_runner,  # noqa: F401  (fixture)
    pg_dsn,  # noqa: F401  (fixture)
    sql,
    start_bridge,
)

EU = "region = 'eu'"
Op = tuple[int, str, int]  # (version, kind, id)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc_bridge.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, Any]) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def region(k: int) -> str:
    return "eu" if k % 2 else "us"


def settle(url: str, subject: str) -> list[dict[str, Any]]:
    """The stream's events once it has stopped growing for a second."""
    last = [-1, time.monotonic()]

    def stable() -> bool:
        n = stream_count(url)
        if n != last[0]:
            last[0], last[1] = n, time.monotonic()
        return time.monotonic() - last[1] >= 1.0

    wait_for(stable, timeout_s=60, interval_s=0.1, what="a quiet stream")
    return [m.body["data"] for m in stream_messages(url, subject=subject)]


def check_partial(events: list[dict[str, Any]], ops: list[Op], n: int,
                  table: dict[int, tuple[str, int]]) -> list[dict[str, Any]]:
    """The checks shared by postgres and mysql_binlog (see the module docstring)."""
    reads = [d for d in events if d["op"] == "r"]
    assert reads and all(d["after"]["region"] == "eu" for d in reads), "an r outside the where"
    deleted = {k for _, kind, k in ops if kind == "d"}
    missing = {k for k in range(1, n + 1) if region(k) == "eu" and k not in deleted} - \
        {d["after"]["id"] for d in reads}
    assert not missing, f"eu rows without an r: {sorted(missing)[:10]}"
    # no change dropped or doubled: every write is in the stream once
    version_of_delete = {k: v for v, kind, k in ops if kind == "d"}
    streamed = sorted(version_of_delete[d["before"]["id"]] if d["op"] == "d"
                      else d["after"]["v"] for d in events if d["op"] in "cud")
    assert streamed == sorted(v for v, _, _ in ops), "a change is missing or doubled"
    state: dict[int, int] = {}
    gone: set[int] = set()
    for d in events:  # per key: versions never go back; no r after the key's delete
        if d["op"] == "d":
            gone.add(d["before"]["id"])
            state.pop(d["before"]["id"], None)
            continue
        key, v = d["after"]["id"], d["after"]["v"]
        assert key not in gone, f"{d['op']} of {key} after its delete"
        assert v >= state.get(key, -1), f"key {key}: {d['op']} {v} after {state[key]}"
        state[key] = v
    # the fold: every eu row of the table, and every key it holds as the table has it
    eu = {k: v for k, (r, v) in table.items() if r == "eu"}
    assert {k: v for k, v in state.items() if k in eu} == eu
    assert all(table.get(k, ("", -1))[1] == v for k, v in state.items())
    return reads


class PgWriter(threading.Thread):
    """Serial changes of ``kv`` with increasing versions ``v``, rows of both regions."""

    def __init__(self, dsn: str, n: int, pause_s: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.n, self.pause_s = dsn, n, pause_s
        self.ops: list[Op] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            v = 0
            while not self.stop.is_set():
                v += 1
                if v % 40 == 0:
                    k = (v * 31) % self.n + 1
                    if conn.execute("DELETE FROM kv WHERE id = %s", (k,)).rowcount:
                        self.ops.append((v, "d", k))
                elif v % 10 == 0:
                    k = self.n + v
                    conn.execute("INSERT INTO kv VALUES (%s, %s, %s)", (k, region(k), v))
                    self.ops.append((v, "c", k))
                else:  # keys of both regions, in every chunk
                    cur = conn.execute("UPDATE kv SET v = %s WHERE id %% 300 = %s RETURNING id",
                                       (v, v % 4))
                    self.ops += [(v, "u", k) for (k,) in cur.fetchall()]
                time.sleep(self.pause_s)


def _resnap_rows(outbox: Path, adapter: str) -> int:
    resnap = (committed_checkpoint(outbox, adapter) or {}).get("resnapshot")
    return int(resnap["rows"]) if resnap and not resnap.get("finished") else 0


def test_postgres_partial_backfill_live_kill9_and_http(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str,  # noqa: F811
        bridge_runner: list[BridgeProcess]) -> None:  # noqa: F811
    n = 12_000
    sql(pg_dsn, "CREATE TABLE kv (id bigint PRIMARY KEY, region text NOT NULL, v int NOT NULL)",
        f"INSERT INTO kv SELECT g, CASE WHEN g % 2 = 1 THEN 'eu' ELSE 'us' END, 0 "
        f"FROM generate_series(1, {n}) g", "ANALYZE kv")
    port = free_port()
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc",
                 "ack_timeout": "5s"},
        "http": {"enabled": True, "host": "127.0.0.1", "port": port},
        "adapters": [{"name": "shop", "type": "postgres", "dsn": pg_dsn, "tables": ["kv"],
                      "snapshot": "never", "snapshot_chunk_size": 100,
                      "heartbeat_interval": "1s", "status_interval": "1s"}]})
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge0.log")
    wait_for(lambda: "streaming from slot" in bridge.log(), what="streaming")
    # refused before anything is sent: the position and a caret; op; then by the adapter
    bad = cli("snapshot", "-c", str(cfg), "shop", "kv", "--where", "region = = 'eu'")
    assert bad.returncode == 2, bad
    assert "at column 10" in bad.stderr and "\n             ^" in bad.stderr, bad.stderr
    bad = cli("snapshot", "-c", str(cfg), "shop", "kv", "--where", "op = 'r'")
    assert bad.returncode == 2 and "cannot read op" in bad.stderr, bad.stderr
    bad = cli("snapshot", "-c", str(cfg), "shop", "kv", "--where", "nope = 1", "--timeout", "30")
    assert bad.returncode == 1 and "has no column 'nope'" in bad.stderr, bad.stderr
    bad = cli("snapshot", "-c", str(cfg), "shop", "kv", "--where", "region = 5", "--timeout",
              "30")
    assert bad.returncode == 1 and "operator does not exist" in bad.stderr, bad.stderr

    writer = PgWriter(pg_dsn, n, pause_s=0.01)
    writer.start()
    outbox = tmp_path / "state" / "outbox.db"
    follower = subprocess.Popen(
        [sys.executable, "-m", "cdc_bridge.cli", "snapshot", "-c", str(cfg), "shop", "kv",
         "--where", EU, "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_for(lambda: _resnap_rows(outbox, "shop") >= 1200, timeout_s=60, interval_s=0.005,
                 what="part of the backfill committed")
        bridge.kill9()
        resnap = (committed_checkpoint(outbox, "shop") or {})["resnapshot"]
        assert 0 < resnap["rows"] < n // 2, "the kill must land mid-backfill"
        assert resnap["wheres"] == {"public.kv": EU}, resnap
        assert follower.poll() is None, "the CLI gave up while the daemon was down"
        time.sleep(0.5)  # writes while the bridge is down
        bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge1.log")
        wait_for(lambda: "re-snapshot gen 1 resumes" in bridge.log(), what="the resume")
        out, err = follower.communicate(timeout=120)
    finally:
        writer.stop.set()
        writer.join()
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, (out, err, bridge.log()[-3000:])
    assert "where region = 'eu'" in out and "done" in out, out
    events = settle(nats_server.url, "cdc.shop.>")
    table = {k: (r, v) for k, r, v in sql(pg_dsn, "SELECT id, region, v FROM kv")}
    reads = check_partial(events, writer.ops, n, table)
    prefixes = {d["source"]["position"].split(":")[1] for d in reads}
    assert len(prefixes) == 2, f"reads before and after the restart: {prefixes}"
    assert len(reads) < n, len(reads)

    # the same over HTTP: a bad where is a 400 with its position; a good one runs
    base = f"http://127.0.0.1:{port}"
    status, text = post(base + "/snapshot", {"adapter": "shop", "where": "id < < 3"})
    assert status == 400 and "at column 6" in text and "^" in text, (status, text)
    status, text = post(base + "/snapshot", {"adapter": "shop", "tables": ["kv"],
                                             "where": "id <= 40 and region = 'us'"})
    assert status == 202, text
    rid = json.loads(text)["id"]

    def finished() -> dict[str, Any] | None:
        with urllib.request.urlopen(f"{base}/requests/{rid}", timeout=5) as r:
            got: dict[str, Any] = json.loads(r.read())
        return got if got["status"] in ("done", "failed") else None

    got = wait_for(finished, timeout_s=60, what="the HTTP request")
    assert got["status"] == "done" and got["where"] == "id <= 40 and region = 'us'", got
    later = settle(nats_server.url, "cdc.shop.>")[len(events):]
    http_reads = sorted(d["after"]["id"] for d in later if d["op"] == "r")
    assert http_reads == sorted(k for k, (r, _) in table.items() if k <= 40 and r == "us")
    assert bridge.terminate() == 0, bridge.log()[-3000:]


class MyWriter(threading.Thread):
    """The same writer for MariaDB (versions ``v``, rows of both regions)."""

    def __init__(self, server: MariaDBServer, db: str, n: int, pause_s: float) -> None:
        super().__init__(daemon=True)
        self.server, self.db, self.n, self.pause_s = server, db, n, pause_s
        self.ops: list[Op] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = pymysql.connect(host="127.0.0.1", port=self.server.port, user="root",
                               database=self.db, autocommit=True)
        v = 0
        with conn.cursor() as cur:
            while not self.stop.is_set():
                v += 1
                if v % 40 == 0:
                    k = (v * 31) % self.n + 1
                    if cur.execute("DELETE FROM kv WHERE id = %s", (k,)):
                        self.ops.append((v, "d", k))
                elif v % 10 == 0:
                    k = self.n + v
                    cur.execute("INSERT INTO kv VALUES (%s, %s, %s)", (k, region(k), v))
                    self.ops.append((v, "c", k))
                else:
                    cur.execute("SELECT id FROM kv WHERE id %% 150 = %s", (v % 4,))
                    keys = [k for (k,) in cur.fetchall()]
                    cur.execute("UPDATE kv SET v = %s WHERE id %% 150 = %s", (v, v % 4))
                    self.ops += [(v, "u", k) for k in keys]
                time.sleep(self.pause_s)
        conn.close()


def test_mysql_binlog_partial_backfill_during_writes(
        tmp_path: Path, nats_server: NatsServer, mariadb_binlog_server: MariaDBServer) -> None:
    server, n = mariadb_binlog_server, 4000
    db = unique("partial")
    run_sql(server, f"CREATE DATABASE {db}")
    run_sql(server, "CREATE TABLE kv (id bigint PRIMARY KEY, region varchar(8) NOT NULL, "
                    "v int NOT NULL)",
            f"INSERT INTO kv SELECT seq, IF(seq % 2 = 1, 'eu', 'us'), 0 FROM seq_1_to_{n}",
            database=db)
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc",
                 "ack_timeout": "5s"},
        "adapters": [{"name": "erp", "type": "mysql_binlog",
                      "dsn": f"mysql://root@127.0.0.1:{server.port}", "tables": [f"{db}.kv"],
                      "snapshot": "never", "heartbeat_interval": "1s",
                      "snapshot_chunk_size": 100, "server_id": 7800 + server.port % 100}]})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    writer = MyWriter(server, db, n, pause_s=0.003)
    try:
        wait_for(lambda: "streaming the binlog from" in bridge.log(), what="streaming")
        writer.start()
        wait_for(lambda: len(writer.ops) > 30, what="writes")
        result = cli("snapshot", "-c", str(cfg), "erp", "kv", "--where", EU, "--timeout", "90")
        wait_for(lambda: len(writer.ops) > 30 + 300, what="more writes after it")
    finally:
        writer.stop.set()
        if writer.is_alive():
            writer.join()
    try:
        assert result.returncode == 0, (result.stdout, result.stderr, bridge.log()[-3000:])
        resnap = (committed_checkpoint(tmp_path / "state" / "outbox.db", "erp") or {})[
            "resnapshot"]
        assert 1900 <= resnap["total"] <= 2000, resnap  # the total counts the eu rows
        events = settle(nats_server.url, "cdc.erp.>")
        table = {k: (r, v) for k, r, v in run_sql(server, "SELECT id, region, v FROM kv",
                                                  database=db)}
        reads = check_partial(events, writer.ops, n, table)
        assert len(reads) == len({d["after"]["id"] for d in reads}), "a row read twice"
        assert bridge.terminate() == 0, bridge.log()[-3000:]
    finally:
        if bridge.alive():
            bridge.kill9()


def test_sql_poll_partial_backfill_incrementing_and_diff(tmp_path: Path,
                                                         nats_server: NatsServer) -> None:
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        for t in ("invoices", "customers"):
            conn.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, region TEXT, v TEXT)")
            conn.executemany(f"INSERT INTO {t} VALUES (?, ?, ?)",
                             [(i, region(i), f"{t[0]}{i}") for i in range(1, 301)])
    (tmp_path / "drop").mkdir()
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "ack_timeout": "3s"},
        "adapters": [
            {"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
             "poll_interval": "4s", "batch_size": 25, "tables": [
                 {"name": "invoices", "mode": "incrementing", "incrementing_column": "id"},
                 {"name": "customers", "mode": "diff", "filter": "v != 'c7'"}]},
            {"name": "dropbox", "type": "files", "path": str(tmp_path / "drop"),
             "pattern": "*.csv", "format": "csv", "mode": "drop", "key": ["id"]}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        def subject(t: str) -> list[dict[str, Any]]:
            return [m.body["data"] for m in stream_messages(nats_server.url,
                                                            subject=f"cdc.erp._.{t}.>")]
        wait_for(lambda: len(subject("invoices")) == 300 and len(subject("customers")) == 299,
                 what="the first snapshot")
        first = {t: len(subject(t)) for t in ("invoices", "customers")}
        # a source that cannot: refused clearly, before anything is queued
        refused = cli("snapshot", "-c", str(cfg), "dropbox", "--where", EU)
        assert refused.returncode == 2, refused
        assert "a partial snapshot (--where) is not supported by this adapter type (files)" \
            in refused.stderr, refused.stderr
        # changes the next normal diff pass must still find: updates of both regions,
        # deletes of an eu and a us row (the backfill must not delete anything else)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE customers SET v = v || '!' WHERE id IN (1, 2, 3, 4)")
            conn.execute("DELETE FROM customers WHERE id IN (5, 6)")
        result = cli("snapshot", "-c", str(cfg), "erp", "invoices", "customers", "--where",
                     f"{EU} and id <= 100", "--timeout", "60")
        assert result.returncode == 0, (result.stdout, result.stderr, bridge.log()[-3000:])
        inv = subject("invoices")[first["invoices"]:]
        assert sorted(d["after"]["id"] for d in inv if d["op"] == "r") == \
            list(range(1, 101, 2))
        # the diff pass read eu rows up to 100 (c7 stays out by the table's filter) and
        # deleted nothing: rows outside the where are not gone
        cus = subject("customers")[first["customers"]:]
        backfill = [d for d in cus if d["source"].get("resnapshot")]
        assert sorted(d["after"]["id"] for d in backfill) == \
            [i for i in range(1, 101, 2) if i not in (5, 7)]
        assert next(d for d in backfill if d["after"]["id"] == 3)["after"]["v"] == "c3!"
        assert not [d for d in cus if d["op"] == "d" and d["before"]["id"] not in (5, 6)]
        # the next normal pass: the us update and both deletes, nothing for eu 1 and 3
        wait_for(lambda: len([d for d in subject("customers") if d["op"] == "d"]) == 2,
                 what="the deletes of the next normal pass")
        cus = settle(nats_server.url, "cdc.erp._.customers.>")[first["customers"]:]
        normal = [(d["op"], (d["after"] or d["before"])["id"]) for d in cus
                  if not d["source"].get("resnapshot")]
        # (a normal pass that ran between the UPDATE and the backfill's request saw eu 1
        # and 3 change too: then they are in it, once, and not again after the backfill)
        assert sorted(normal) in ([("d", 5), ("d", 6), ("u", 2), ("u", 4)],
                                  [("d", 5), ("d", 6), ("u", 1), ("u", 2), ("u", 3),
                                   ("u", 4)]), normal
        state: dict[int, str] = {}
        for d in subject("customers"):
            if d["op"] == "d":
                state.pop(d["before"]["id"], None)
            else:
                state[d["after"]["id"]] = d["after"]["v"]
        with sqlite3.connect(db) as conn:
            table = dict(conn.execute("SELECT id, v FROM customers WHERE v != 'c7'"))
        assert state == table
        assert bridge.terminate() == 0, bridge.log()[-3000:]
    finally:
        if bridge.alive():
            bridge.kill9()
