"""``cdc-bridge snapshot`` on ``type: postgres``: a live re-snapshot while writes go on.

Real PostgreSQL 15, real nats-server, the bridge as a real process and the CLI as a
real subprocess. The adapter runs with ``snapshot: never`` so every row's state in the
stream must come from the re-snapshot (or a later change). A writer makes serial
changes with increasing versions (``balance = v``) during the re-snapshot; then:

* every row that existed before and still exists has exactly one ``r`` event;
* every change made while the bridge ran is in the stream (none dropped);
* per key, states in stream order never go back (an ``r`` never overtakes a newer
  change) and no ``r`` follows the key's delete;
* folding the stream gives the table;
* capture of another table goes on during the re-snapshot.

The second test kills the bridge (``kill -9``) in the middle of the re-snapshot; the
CLI keeps following the request, the restarted daemon resumes it, the CLI ends ``done``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.helpers import BridgeProcess, committed_checkpoint, wait_for
from tests.services.nats_server import NatsServer
from tests.test_pg_adapter import (
    bridge_runner,  # noqa: F401  (fixture)
    changes,
    fold,
    pg_config,
    pg_dsn,  # noqa: F401  (fixture)
    sql,
    start_bridge,
    stream_messages,
)

Op = tuple[int, str, int]  # (version, kind, id)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc_bridge.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


class Writer(threading.Thread):
    """Serial transactions on ``acc`` (versions 1, 2, ...) and inserts into ``other``.

    Most transactions update one key in every 400 (``id % 400`` = 0, 1 or 2), so every
    chunk of the re-snapshot holds keys that change while it is read and released.
    """

    def __init__(self, dsn: str, n: int, pause_s: float = 0.004) -> None:
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
                    if conn.execute("DELETE FROM acc WHERE id = %s", (k,)).rowcount:
                        self.ops.append((v, "d", k))
                elif v % 10 == 0:
                    conn.execute("INSERT INTO acc VALUES (%s, %s)", (self.n + v, v))
                    self.ops.append((v, "c", self.n + v))
                    conn.execute("INSERT INTO other VALUES (%s)", (v,))
                else:  # one transaction updates a hot key in every 400: each chunk has one
                    cur = conn.execute("UPDATE acc SET balance = %s WHERE id %% 400 = %s "
                                       "RETURNING id", (v, v % 3))
                    self.ops += [(v, "u", k) for (k,) in cur.fetchall()]
                time.sleep(self.pause_s)


def setup(dsn: str, n: int) -> None:
    sql(dsn, "CREATE TABLE acc (id bigint PRIMARY KEY, balance int NOT NULL)",
        f"INSERT INTO acc SELECT g, 0 FROM generate_series(1, {n}) g",
        "CREATE TABLE other (id int PRIMARY KEY)", "ANALYZE acc")


def settled(url: str, last: Op) -> list[dict[str, Any]]:
    """The stream once it holds the writer's last change (and the re-snapshot's rows)."""
    v, kind, _ = last

    def has_last() -> list[dict[str, Any]] | None:
        datas = changes(stream_messages(url, subject="cdc.shop.>"))
        acc = [d for d in datas if d["source"]["table"] == "acc" and d["op"] != "r"]
        versions = {d["after"]["balance"] for d in acc if d["op"] != "d"}
        if kind == "d" or v in versions:
            return datas
        return None

    wait_for(has_last, timeout_s=60, what="the last change")
    time.sleep(1.0)
    return changes(stream_messages(url, subject="cdc.shop.>"))


def check(datas: list[dict[str, Any]], ops: list[Op], n: int, dsn: str) -> list[dict[str, Any]]:
    acc = [d for d in datas if d["source"]["table"] == "acc"]
    final = {r[0]: r[1] for r in sql(dsn, "SELECT id, balance FROM acc")}
    assert {k: v["balance"] for k, v in fold(acc, "acc").items()} == final
    reads = [d["after"]["id"] for d in acc if d["op"] == "r"]
    assert len(reads) == len(set(reads)), "a row was read twice"
    deleted = {i for _, kind, i in ops if kind == "d"}
    missing = {i for i in range(1, n + 1) if i not in deleted} - set(reads)
    assert not missing, f"rows without an r event: {sorted(missing)[:10]}"
    # no change dropped: every write is in the stream as its own event
    version_of_delete = {i: v for v, kind, i in ops if kind == "d"}
    streamed = sorted(version_of_delete[d["before"]["id"]] if d["op"] == "d"
                      else d["after"]["balance"] for d in acc if d["op"] in "cud")
    assert streamed == sorted(v for v, _, _ in ops), "a change is missing or doubled"
    # per key, states never go back; no r after the key's delete
    state: dict[int, int] = {}
    gone: set[int] = set()
    for d in acc:
        if d["op"] == "d":
            gone.add(d["before"]["id"])
            continue
        key, bal = d["after"]["id"], d["after"]["balance"]
        assert key not in gone, f"{d['op']} of {key} after its delete"
        assert bal >= state.get(key, -1), f"key {key}: {d['op']} {bal} after {state[key]}"
        state[key] = bal
    ids = [d["source"]["position"] + ":" + str(d["source"]["index"]) for d in datas]
    assert len(ids) == len(set(ids))
    return acc


def test_live_resnapshot_under_concurrent_writes(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str,  # noqa: F811
        bridge_runner: list[BridgeProcess]) -> None:  # noqa: F811
    n = 20_000
    setup(pg_dsn, n)
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["acc", "other"],
                    snapshot="never", snapshot_chunk_size=400)
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge.log")
    wait_for(lambda: "streaming from slot" in bridge.log(), what="streaming")
    # refused clearly: a table the adapter does not capture
    bad = cli("snapshot", "-c", str(cfg), "shop", "public.nope", "--timeout", "30")
    assert bad.returncode == 1 and "'public.nope' is not captured by adapter shop" in \
        bad.stderr, bad.stderr
    writer = Writer(pg_dsn, n)
    writer.start()
    try:
        time.sleep(0.3)
        result = cli("snapshot", "-c", str(cfg), "shop", "acc", "--timeout", "90")
        time.sleep(0.3)
    finally:
        writer.stop.set()
        writer.join()
    assert result.returncode == 0, (result.stdout, result.stderr, bridge.log()[-3000:])
    assert "rows read" in result.stdout and "done" in result.stdout
    rows_read = int(result.stdout.split("done, ")[1].split(" rows")[0])
    datas = settled(nats_server.url, writer.ops[-1])
    acc = check(datas, writer.ops, n, pg_dsn)
    reads = [d for d in acc if d["op"] == "r"]
    assert rows_read == len(reads), "the CLI's count is the committed r events"
    # the re-snapshot ran interleaved with the stream: changes between first and last r
    first = next(i for i, d in enumerate(datas) if d["op"] == "r")
    last = max(i for i, d in enumerate(datas) if d["op"] == "r")
    between = [d for d in datas[first:last] if d["op"] != "r"]
    assert any(d["source"]["table"] == "other" for d in between), "capture paused"
    assert any(d["source"]["table"] == "acc" for d in between)
    assert "/20000 rows)" in result.stderr, result.stderr  # progress: rows/total
    assert "re-snapshot gen 1 done" in bridge.log()
    assert bridge.terminate() == 0, bridge.log()[-3000:]


def _resnap_rows(outbox: Path) -> int:
    """Rows of the unfinished re-snapshot the outbox holds (0: none in progress)."""
    resnap = (committed_checkpoint(outbox, "shop") or {}).get("resnapshot")
    return int(resnap["rows"]) if resnap and not resnap.get("finished") else 0


def test_kill9_mid_resnapshot_resumes_and_completes(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str,  # noqa: F811
        bridge_runner: list[BridgeProcess]) -> None:  # noqa: F811
    n = 20_000
    setup(pg_dsn, n)
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["acc", "other"],
                    snapshot="never", snapshot_chunk_size=200)
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge0.log")
    wait_for(lambda: "streaming from slot" in bridge.log(), what="streaming")
    writer = Writer(pg_dsn, n, pause_s=0.01)
    writer.start()
    outbox = tmp_path / "state" / "outbox.db"
    follower = subprocess.Popen(
        [sys.executable, "-m", "cdc_bridge.cli", "snapshot", "-c", str(cfg), "shop", "acc",
         "--timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "re-snapshot gen 1 requested" in bridge.log(), what="the request")
        wait_for(lambda: _resnap_rows(outbox) >= 2500, timeout_s=60, interval_s=0.005,
                 what="part of the re-snapshot committed")
        bridge.kill9()
        assert 0 < _resnap_rows(outbox) < n, "the kill must land mid-re-snapshot"
        assert follower.poll() is None, "the CLI gave up while the daemon was down"
        time.sleep(1.0)  # writes while the bridge is down
        bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge1.log")
        wait_for(lambda: "resumes" in bridge.log(), what="the resumed re-snapshot")
        time.sleep(1.0)  # writes during the resumed run
        writer.stop.set()
        writer.join()
        out, err = follower.communicate(timeout=120)
    finally:
        writer.stop.set()
        writer.join()
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, (out, err, bridge.log()[-3000:])
    assert "done" in out
    log = bridge.log()
    assert "re-snapshot gen 1 resumes" in log and "re-snapshot gen 1 done" in log, log[-3000:]
    datas = settled(nats_server.url, writer.ops[-1])
    acc = check(datas, writer.ops, n, pg_dsn)
    positions = {d["source"]["position"].split(":")[1] for d in acc if d["op"] == "r"}
    assert len(positions) == 2, f"reads before and after the restart: {positions}"
    assert bridge.terminate() == 0, log[-3000:]
