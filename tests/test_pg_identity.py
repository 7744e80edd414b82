"""A postgres source beside an outbox that lost its memory refuses to start.

The slot was consumed into outbox A; outbox A is then lost (its file truncated to 0
bytes, as a faulty backup job would leave it). Before this check the bridge treated the
empty outbox as a first run and re-sent every row as a new snapshot beside a slot that
was past them. Now it refuses with the command that accepts a reset; after
``cdc-bridge reset-source`` the next start snapshots afresh.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import BridgeProcess, stream_count
from tests.services.nats_server import NatsServer
from tests.test_pg_adapter import pg_config, pg_dsn, sql, wait_count  # noqa: F401 (fixture)


def test_lost_outbox_refuses_then_reset_source_starts_afresh(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str) -> None:  # noqa: F811
    sql(pg_dsn, "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        "INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 20) g")
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["public.kv"])
    first = BridgeProcess(cfg, tmp_path / "first.log")
    first.start()
    try:
        wait_count(nats_server.url, 20)
        sql(pg_dsn, "UPDATE kv SET v = 'x' WHERE k = 1")
        wait_count(nats_server.url, 21)
    finally:
        assert first.terminate() == 0, first.log()
    mark = sql(pg_dsn, "SELECT obj_description(oid, 'pg_publication') FROM pg_publication")
    assert "belongs to outbox" in str(mark)

    state = tmp_path / "state"
    for name in ("outbox.db-wal", "outbox.db-shm"):
        (state / name).unlink(missing_ok=True)
    (state / "outbox.db").write_bytes(b"")  # the outbox lost its memory
    before = stream_count(nats_server.url)
    second = BridgeProcess(cfg, tmp_path / "second.log")
    second.start()
    assert second.proc is not None
    try:
        code = second.proc.wait(60)
    finally:
        if second.alive():
            second.terminate()
    assert code == 1, second.log()
    assert "belongs to outbox" in second.log() and "reset-source" in second.log()
    assert stream_count(nats_server.url) == before, "nothing re-sent"

    reset = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "reset-source", "-c",
                            str(cfg), "shop"], capture_output=True, text=True, timeout=60)
    assert reset.returncode == 0, reset.stderr
    assert "dropped replication slot" in reset.stdout
    third = BridgeProcess(cfg, tmp_path / "third.log")
    third.start()
    try:
        msgs = wait_count(nats_server.url, before + 20)  # accepted: a new snapshot
    finally:
        assert third.terminate() == 0, third.log()
    assert sum(1 for m in msgs[before:] if m.body["data"]["op"] == "r") == 20
