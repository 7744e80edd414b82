"""``type: mysql_binlog`` under kill -9 of ``cdc-bridge run``: in the middle of the initial
snapshot, then in the middle of a large transaction. What JetStream holds at the end:
every row exactly once per reading (no duplicate id), and the folded state equal to the
table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.harnesses import unique
from tests.harnesses.mysql_binlog import run_sql
from tests.helpers import (
    BridgeProcess,
    committed_checkpoint,
    stream_messages,
    wait_for,
    write_config,
)
from tests.services.mariadb import MariaDBServer
from tests.services.nats_server import NatsServer
from tests.test_pg_adapter import wait_stable


def _config(tmp: Path, nats_url: str, server: MariaDBServer, db: str) -> Path:
    block: dict[str, Any] = {
        "name": "erp", "type": "mysql_binlog", "dsn": f"mysql://root@127.0.0.1:{server.port}",
        "tables": [f"{db}.ev"], "heartbeat_interval": "1s", "batch_size": 500,
        "snapshot_chunk_size": 500, "server_id": 8000 + server.port % 1000}
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc", "ack_timeout": "5s"},
        "adapters": [block]})


def _start(tmp: Path, cfg: Path, n: int) -> BridgeProcess:
    bridge = BridgeProcess(cfg, tmp / f"bridge{n}.log")
    bridge.start()
    return bridge


def test_kill9_in_snapshot_and_in_large_transaction(
        tmp_path: Path, nats_server: NatsServer, mariadb_binlog_server: MariaDBServer) -> None:
    server = mariadb_binlog_server
    db = unique("kill")
    run_sql(server, f"CREATE DATABASE {db}")
    snap_rows, big = 30_000, 60_000
    run_sql(server, "CREATE TABLE ev (id int PRIMARY KEY, v varchar(40))",
            f"INSERT INTO ev SELECT seq, 'snap' FROM seq_1_to_{snap_rows}", database=db)
    cfg = _config(tmp_path, nats_server.url, server, db)
    outbox = tmp_path / "state" / "outbox.db"

    def checkpoint() -> dict[str, Any]:
        return committed_checkpoint(outbox, "erp") or {}

    bridge = _start(tmp_path, cfg, 0)
    wait_for(lambda: (checkpoint().get("snapshot") or {}).get("rows", 0) >= 3000,
             timeout_s=60, interval_s=0.005, what="part of the snapshot committed")
    bridge.kill9()
    assert checkpoint()["snapshot"] is not None, "the kill must land mid-snapshot"
    # rows changed while the bridge is down, inside and outside the copied range
    run_sql(server, "UPDATE ev SET v = 'upd' WHERE id IN (5, 29000)",
            "DELETE FROM ev WHERE id IN (6, 29001)", database=db)
    bridge = _start(tmp_path, cfg, 1)
    wait_for(lambda: checkpoint().get("snapshot", 1) is None, timeout_s=90,
             what="the snapshot finished")
    run_sql(server, f"INSERT INTO ev SELECT seq, 'big' FROM seq_{snap_rows + 1}_to_"
            f"{snap_rows + big}", database=db)
    wait_for(lambda: (checkpoint().get("tx") or {}).get("done", 0) >= 5000, timeout_s=60,
             interval_s=0.005, what="part of the big transaction committed")
    bridge.kill9()
    assert checkpoint()["tx"] is not None, "the kill must land mid-transaction"
    bridge = _start(tmp_path, cfg, 2)
    expected = snap_rows - 2 + big
    wait_stable(nats_server.url, expected, timeout_s=120)
    msgs = stream_messages(nats_server.url, subject="cdc.erp.>")
    ids = [m.body["id"] for m in msgs]
    assert len(ids) == len(set(ids)), "a duplicate reached the stream"
    state: dict[int, str] = {}
    for m in msgs:
        data = m.body["data"]
        if data["op"] == "d":
            state.pop(data["before"]["id"], None)
        else:
            state[data["after"]["id"]] = data["after"]["v"]
    table = dict(run_sql(server, "SELECT id, v FROM ev", database=db))  # type: ignore[arg-type]
    assert state == table
    big_rows = [m.body["data"]["after"]["id"] for m in msgs
                if m.body["data"]["op"] == "c" and m.body["data"]["after"]["v"] == "big"]
    assert len(big_rows) == len(set(big_rows)) == big, "a change was emitted twice or lost"
    assert bridge.terminate() == 0, bridge.log()[-3000:]
