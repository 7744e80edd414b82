"""A damaged SQLite outbox is one clear fatal error naming the file and the way out:
never a raw traceback, never endless retries."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdc_bridge.outbox.base import OutboxMessage, StoreDamaged
from cdc_bridge.outbox.sqlite import SqliteStore
from tests.helpers import write_config
from tests.services.nats_server import NatsServer


def test_garbage_and_a_half_file_are_store_damaged(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(64 * 1024))
    with pytest.raises(StoreDamaged, match=r"junk\.db is damaged .*move .* aside"):
        SqliteStore(junk, reserve_bytes=0)

    half = tmp_path / "half.db"
    store = SqliteStore(half, reserve_bytes=0)
    store.append("a", [OutboxMessage(f"id-{i}", "cdc.a._.t.c", os.urandom(3000))
                       for i in range(200)], {"pos": 1})
    store.compact()  # everything in the main file, then cut it in the middle
    store.close()
    with half.open("r+b") as f:
        f.seek(half.stat().st_size // 2)
        f.write(os.urandom(8192))
    with pytest.raises(StoreDamaged, match=r"half\.db is damaged"):
        reopened = SqliteStore(half, reserve_bytes=0)
        reopened.pending(0, 1000)


def test_the_daemon_stops_at_once_on_a_damaged_outbox(tmp_path: Path,
                                                       nats_server: NatsServer) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(os.urandom(100_000))
    cfg = write_config(tmp_path / "bridge.yaml", {"state_dir": str(state),
                                                  "nats": {"url": nats_server.url}})
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "run", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert f"outbox {state / 'outbox.db'} is damaged" in out.stderr
    assert "Traceback" not in out.stderr and "retrying" not in out.stderr
    assert time.monotonic() - started < 60
