"""``cdc-bridge snapshot`` on ``type: mysql_binlog``: a live re-snapshot while writes go on.

Real MariaDB with a row binlog, real nats-server, the bridge as a real process and the
CLI as a real subprocess. The adapter runs with ``snapshot: never``, so every row's
state in the stream comes from the re-snapshot or a later change. A writer makes serial
changes with increasing versions (``balance = v``) all along; then:

* every row that existed before and still exists has exactly one ``r`` event;
* every change made while the bridge ran is in the stream once (none dropped);
* per key, states in stream order never go back and no ``r`` follows the key's delete;
* folding the stream (``r``/``c``/``u`` set a key, ``d`` removes it) gives the table;
* capture of another table goes on during the re-snapshot.

The second test kills the bridge (``kill -9``) in the middle of the re-snapshot: the
CLI keeps following the request, the restarted daemon resumes it, the CLI ends ``done``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pymysql
import pytest

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

Op = tuple[int, str, int]  # (version, kind, id)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc_bridge.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


class Writer(threading.Thread):
    """Serial autocommit changes of ``acc`` (versions 1, 2, ...) and inserts into
    ``other``; most update the keys ``id % 200 == v % 3``, so every chunk holds keys that
    change while it is read and placed."""

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
                    if cur.execute("DELETE FROM acc WHERE id = %s", (k,)):
                        self.ops.append((v, "d", k))
                elif v % 10 == 0:
                    cur.execute("INSERT INTO acc VALUES (%s, %s)", (self.n + v, v))
                    self.ops.append((v, "c", self.n + v))
                    cur.execute("INSERT INTO other VALUES (%s)", (v,))
                else:
                    cur.execute("SELECT id FROM acc WHERE id %% 200 = %s", (v % 3,))
                    keys = [k for (k,) in cur.fetchall()]
                    cur.execute("UPDATE acc SET balance = %s WHERE id %% 200 = %s", (v, v % 3))
                    self.ops += [(v, "u", k) for k in keys]
                time.sleep(self.pause_s)
        conn.close()


def prepare(server: MariaDBServer, n: int) -> str:
    db = unique("resnap")
    run_sql(server, f"CREATE DATABASE {db}")
    run_sql(server, "CREATE TABLE acc (id bigint PRIMARY KEY, balance int NOT NULL)",
            f"INSERT INTO acc SELECT seq, 0 FROM seq_1_to_{n}",
            "CREATE TABLE other (id int PRIMARY KEY)", "ANALYZE TABLE acc", database=db)
    return db


def bridge_config(tmp: Path, nats_url: str, server: MariaDBServer, db: str,
                  chunk: int) -> Path:
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc", "ack_timeout": "5s"},
        "adapters": [{"name": "erp", "type": "mysql_binlog",
                      "dsn": f"mysql://root@127.0.0.1:{server.port}",
                      "tables": [f"{db}.acc", f"{db}.other"], "snapshot": "never",
                      "heartbeat_interval": "1s", "snapshot_chunk_size": chunk,
                      "server_id": 7700 + server.port % 100}]})


@pytest.fixture
def bridges(tmp_path: Path) -> Any:
    """Bridges started by a test; any still alive at its end is killed."""
    started: list[BridgeProcess] = []

    def start(cfg: Path, n: int) -> BridgeProcess:
        bridge = BridgeProcess(cfg, tmp_path / f"bridge{n}.log")
        bridge.start()
        started.append(bridge)
        return bridge

    yield start
    for b in started:
        if b.alive():
            b.kill9()


def datas(url: str) -> list[dict[str, Any]]:
    return [m.body["data"] for m in stream_messages(url, subject="cdc.erp.>")]


def settled(url: str, writer: Writer) -> list[dict[str, Any]]:
    """The stream once it holds every change the writer made, and has stopped growing."""
    want = sum(1 for _, kind, _ in writer.ops) + sum(1 for _, kind, _ in writer.ops
                                                     if kind == "c")  # + inserts of other
    last = [-1, time.monotonic()]

    def stable() -> bool:
        n = stream_count(url)
        if n != last[0]:
            last[0], last[1] = n, time.monotonic()
        return n >= want and time.monotonic() - last[1] >= 1.0

    wait_for(stable, timeout_s=60, interval_s=0.1, what="the writer's changes in the stream")
    return datas(url)


def check(stream: list[dict[str, Any]], ops: list[Op], n: int, server: MariaDBServer,
          db: str) -> list[dict[str, Any]]:
    acc = [d for d in stream if d["source"]["table"] == "acc"]
    state: dict[int, int] = {}
    gone: set[int] = set()
    for d in acc:  # per key, states never go back; no r (or u) after the key's delete
        if d["op"] == "d":
            gone.add(d["before"]["id"])
            state.pop(d["before"]["id"], None)
            continue
        key, bal = d["after"]["id"], d["after"]["balance"]
        assert key not in gone, f"{d['op']} of {key} after its delete"
        assert bal >= state.get(key, -1), f"key {key}: {d['op']} {bal} after {state[key]}"
        state[key] = bal
    table = dict(run_sql(server, "SELECT id, balance FROM acc", database=db))
    assert state == table, "folding the stream does not give the table"
    reads = [d["after"]["id"] for d in acc if d["op"] == "r"]
    assert len(reads) == len(set(reads)), "a row was read twice"
    deleted = {i for _, kind, i in ops if kind == "d"}
    missing = {i for i in range(1, n + 1) if i not in deleted} - set(reads)
    assert not missing, f"rows without an r event: {sorted(missing)[:10]}"
    version_of_delete = {i: v for v, kind, i in ops if kind == "d"}
    streamed = sorted(version_of_delete[d["before"]["id"]] if d["op"] == "d"
                      else d["after"]["balance"] for d in acc if d["op"] in "cud")
    assert streamed == sorted(v for v, _, _ in ops), "a change is missing or doubled"
    ids = [(d["source"]["position"], d["source"].get("index")) for d in stream]
    assert len(ids) == len(set(ids))
    return acc


def test_live_resnapshot_under_concurrent_writes(
        tmp_path: Path, nats_server: NatsServer, mariadb_binlog_server: MariaDBServer,
        bridges: Any) -> None:
    server, n = mariadb_binlog_server, 6000
    db = prepare(server, n)
    cfg = bridge_config(tmp_path, nats_server.url, server, db, chunk=250)
    bridge = bridges(cfg, 0)
    writer = Writer(server, db, n, pause_s=0.003)
    try:
        wait_for(lambda: "streaming the binlog from" in bridge.log(), what="streaming")
        bad = cli("snapshot", "-c", str(cfg), "erp", f"{db}.nope", "--timeout", "30")
        assert bad.returncode == 1 and f"table '{db}.nope' is not captured" in bad.stderr, \
            bad.stderr
        writer.start()
        wait_for(lambda: len(writer.ops) > 50, what="writes")
        result = cli("snapshot", "-c", str(cfg), "erp", f"{db}.acc", "--timeout", "90")
        wait_for(lambda: len(writer.ops) > 50 + 400, what="more writes after it")
    finally:
        writer.stop.set()
        if writer.is_alive():
            writer.join()
    assert result.returncode == 0, (result.stdout, result.stderr, bridge.log()[-3000:])
    assert "done" in result.stdout and "rows read" in result.stdout, result.stdout
    rows_read = int(result.stdout.split("done, ")[1].split(" rows")[0])
    stream = settled(nats_server.url, writer)
    acc = check(stream, writer.ops, n, server, db)
    reads = [i for i, d in enumerate(stream) if d["op"] == "r"]
    assert rows_read == len(reads), "the CLI's count is the committed r events"
    between = [d for d in stream[reads[0]:reads[-1]] if d["op"] != "r"]
    assert any(d["source"]["table"] == "other" for d in between), "capture paused"
    assert any(d["source"]["table"] == "acc" for d in between)
    assert all(d["source"]["position"].startswith("snap:1.1@") for d in acc if d["op"] == "r")
    assert "re-snapshot gen 1 done" in bridge.log()
    assert bridge.terminate() == 0, bridge.log()[-3000:]


def _resnap_rows(outbox: Path) -> int:
    """Rows of the unfinished re-snapshot the outbox holds (0: none in progress)."""
    resnap = (committed_checkpoint(outbox, "erp") or {}).get("resnapshot")
    return int(resnap["rows"]) if resnap and not resnap.get("finished") else 0


def test_kill9_mid_resnapshot_resumes_and_completes(
        tmp_path: Path, nats_server: NatsServer, mariadb_binlog_server: MariaDBServer,
        bridges: Any) -> None:
    server, n = mariadb_binlog_server, 20_000
    db = prepare(server, n)
    cfg = bridge_config(tmp_path, nats_server.url, server, db, chunk=100)
    bridge = bridges(cfg, 0)
    writer = Writer(server, db, n, pause_s=0.01)
    outbox = tmp_path / "state" / "outbox.db"
    follower: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: "streaming the binlog from" in bridge.log(), what="streaming")
        writer.start()
        follower = subprocess.Popen(
            [sys.executable, "-m", "cdc_bridge.cli", "snapshot", "-c", str(cfg), "erp", "acc",
             "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _resnap_rows(outbox) >= 2000, timeout_s=60, interval_s=0.005,
                 what="part of the re-snapshot committed")
        bridge.kill9()
        assert 0 < _resnap_rows(outbox) < n, "the kill must land mid-re-snapshot"
        assert follower.poll() is None, "the CLI gave up while the daemon was down"
        done_before = len(writer.ops)
        wait_for(lambda: len(writer.ops) > done_before + 20, what="writes while down")
        bridge = bridges(cfg, 1)
        wait_for(lambda: "re-snapshot gen 1 resumes" in bridge.log(), what="the resume")
        out, err = follower.communicate(timeout=120)
    finally:
        writer.stop.set()
        if writer.is_alive():
            writer.join()
        if follower is not None and follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, (out, err, bridge.log()[-3000:])
    assert "done" in out
    log = bridge.log()
    assert "re-snapshot gen 1 done" in log, log[-3000:]
    stream = settled(nats_server.url, writer)
    acc = check(stream, writer.ops, n, server, db)
    prefixes = {d["source"]["position"].rsplit(":", 2)[0] for d in acc if d["op"] == "r"}
    assert len(prefixes) == 2, f"reads before and after the restart: {prefixes}"
    assert bridge.terminate() == 0, log[-3000:]
