"""kill -9 of the real bridge process while the relay drains a large outbox: after the
restart every row is in the stream exactly once, in order, and the outbox is empty.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cdc_bridge.outbox.sqlite import SqliteStore
from tests.helpers import BridgeProcess, stream_count, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.test_relay import assert_once_in_order, make_msgs, read_all


def test_kill_9_while_relaying_then_restart(tmp_path: Path, nats_server: NatsServer) -> None:
    total = 60_000
    subjects = ("cdc.erp._.a.c", "cdc.erp._.b.c", "cdc.crm.public.c.u")
    store = SqliteStore(tmp_path / "state" / "outbox.db")
    msgs = make_msgs(0, total, subjects)
    for i in range(0, total, 5000):
        store.append("erp", msgs[i:i + 5000], {"n": i})
    store.close()
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    kills = 0
    try:
        for threshold in (8_000, 30_000):
            bridge.start()
            wait_for(lambda t=threshold: stream_count(nats_server.url) >= t,
                     interval_s=0.05, what=f"{threshold} published", timeout_s=60)
            bridge.kill9()
            kills += 1
            assert stream_count(nats_server.url) < total, "drained before the kill"
        bridge.start()
        wait_for(lambda: stream_count(nats_server.url) >= total, what="all published",
                 timeout_s=90)
        reopened = SqliteStore(tmp_path / "state" / "outbox.db")
        wait_for(lambda: reopened.stats().pending == 0, what="outbox empty", timeout_s=30)
        reopened.close()
        time.sleep(0.5)
    finally:
        if bridge.alive():
            assert bridge.terminate() == 0, bridge.log()
    assert kills == 2
    stored = asyncio.run(read_all(nats_server.url))
    assert len(stored) == total  # exactly once: republished rows were dropped as duplicates
    assert_once_in_order(stored, range(total))
