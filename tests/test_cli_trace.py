"""``cdc-bridge trace`` as a real command: a bridge process on a SQLite source (sql_poll),
a real nats-server, durable consumers that acknowledge some events and dead-letter one,
and NATS stopped while a change waits in the outbox."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js import api

from cdc_bridge.client.consumer import Consumer, ConsumerSettings, Event
from tests.helpers import (
    BridgeProcess,
    add_rows,
    appended_events,
    stream_messages,
    wait_for,
    write_config,
)
from tests.services.nats_server import NatsServer


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "trace", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def bridge(tmp_path: Path, nats_server: NatsServer) -> Iterator[tuple[Path, Path, NatsServer]]:
    db = tmp_path / "legacy.db"
    add_rows(db, 30)
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "ack_timeout": "3s"},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
                      "poll_interval": "100ms",
                      "tables": [{"name": "invoices", "incrementing_column": "id"}]}],
    })
    proc = BridgeProcess(cfg, tmp_path / "bridge.log")
    proc.start()
    wait_for(lambda: len(stream_messages(nats_server.url)) >= 30, what="30 events")
    yield cfg, db, nats_server
    if proc.alive():
        proc.terminate()


async def consume(url: str, durable: str, filt: str, fetch: int, ack: int) -> None:
    """A durable consumer that is delivered ``fetch`` messages and acknowledges ``ack``."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(filt, durable=durable, stream="CDC",
                                      config=api.ConsumerConfig(ack_wait=300))
        msgs = await sub.fetch(fetch, timeout=5) if fetch else []
        for m in msgs[:ack]:
            await m.ack_sync()
    finally:
        await nc.close()


async def consume_until_settled(consumer: Consumer, events: int, timeout_s: float = 90.0
                                ) -> None:
    """Run ``consumer`` until it has handled or dead-lettered ``events`` events, then stop
    it (what trace reports is the point here, not the consumer's own idle detection)."""
    task = asyncio.create_task(consumer.run())
    deadline = time.monotonic() + timeout_s
    try:
        while consumer.stats.handled + consumer.stats.dead_lettered < events:
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, f"consumer stuck: {consumer.stats}"
            await asyncio.sleep(0.1)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)


def trace_json(cfg: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli("-c", str(cfg), "--json", *args)
    assert result.returncode != 2, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_trace_stored_events_and_consumer_states(bridge: Any) -> None:
    cfg, _, server = bridge
    asyncio.run(consume(server.url, "billing", "cdc.erp.>", fetch=12, ack=10))
    asyncio.run(consume(server.url, "shop", "cdc.shop.>", fetch=0, ack=0))

    acked = cli("-c", str(cfg), "--adapter", "erp", "--table", "invoices", "--key", "id=5")
    assert acked.returncode == 0, acked.stdout + acked.stderr
    out = acked.stdout
    assert 'cdc.erp._.invoices.r op r key {"id":5}' in out
    assert "erp position invoices:" in out and "mode=incrementing" in out
    assert "stored in CDC at sequence 6" in out  # (after the table's schema event)
    assert "billing: acknowledged" in out
    assert "shop: not for this consumer (filter cdc.shop.>)" in out

    waiting = cli("-c", str(cfg), "-a", "erp", "-t", "invoices", "-k", '{"id": 20}')
    assert waiting.returncode == 3, waiting.stdout + waiting.stderr
    assert "billing: not yet delivered, 9 messages ahead of it (7 undelivered, 2 awaiting " \
           "ack)" in waiting.stdout

    unacked = cli("-c", str(cfg), "-a", "erp", "-t", "invoices", "-k", "id=11")
    assert unacked.returncode == 3
    assert "billing: delivered, not acknowledged yet" in unacked.stdout

    # by event id: the same facts, as JSON
    fifth = stream_messages(server.url)[4]
    code, data = trace_json(cfg, fifth.headers["Nats-Msg-Id"])
    assert code == 0 and data["exit_code"] == 0 and data["found"] is True
    [ev] = data["events"]
    assert ev["id"] == fifth.headers["Nats-Msg-Id"] and ev["key"] == {"id": 5}
    assert ev["stream"]["name"] == "CDC" and ev["stream"]["seq"] == fifth.seq == 6
    assert ev["source"]["position"] == fifth.body["data"]["source"]["position"]
    assert ev["outbox"]["state"] == "published"
    assert {c["name"]: c["state"] for c in ev["consumers"]} == {
        "billing": "acknowledged", "shop": "not_for_consumer"}

    # the table's history, newest first; the latest event of the table
    code, data = trace_json(cfg, "-a", "erp", "-t", "invoices", "--all", "--limit", "3")
    assert code == 3 and [e["stream"]["seq"] for e in data["events"]] == [31, 30, 29]
    code, data = trace_json(cfg, "-a", "erp", "-t", "invoices")
    assert [e["key"] for e in data["events"]] == [{"id": 30}]

    missing = cli("-c", str(cfg), "0b9e4a52-0000-5000-8000-000000000000")
    assert missing.returncode == 1 and "not found" in missing.stdout
    assert cli("-c", str(cfg), "-k", "id=1").returncode == 2
    assert cli("-c", str(cfg)).returncode == 2
    assert "Exit codes" in cli("--help").stdout


def test_trace_dead_letters_and_an_event_pending_in_the_outbox(bridge: Any) -> None:
    cfg, db, server = bridge

    async def fail_on_3(event: Event) -> None:
        if event.key == {"id": 3}:
            raise RuntimeError("cannot bill invoice 3")

    settings = ConsumerSettings(servers=[server.url], durable="audit",
                                filter_subject="cdc.erp._.invoices.>", max_deliveries=1,
                                floor_refresh_s=0.2)
    asyncio.run(consume_until_settled(Consumer(settings, fail_on_3), 30))

    dead = cli("-c", str(cfg), "-a", "erp", "-t", "invoices", "-k", "id=3")
    assert dead.returncode == 4, dead.stdout + dead.stderr
    assert "audit: dead-lettered: " in dead.stdout and "cannot bill invoice 3" in dead.stdout
    assert "dead-lettered by consumer audit after 1 delivery" in dead.stdout
    assert cli("-c", str(cfg), "-a", "erp", "-t", "invoices", "-k", "id=4").returncode == 0

    # a relay dead letter: the stream refused the event, it never reached CDC
    lost = "5d3a5b8e-1111-5222-8333-444455556666"

    async def relay_dead_letter() -> None:
        nc = await nats.connect(server.url)
        try:
            await nc.jetstream().publish("cdc_dlq.erp", b"", headers={
                "Nats-Msg-Id": f"dlq-{lost}", "Cdc-Original-Id": lost,
                "Cdc-Original-Subject": "cdc.erp._.invoices.c", "Cdc-Adapter": "erp",
                "Cdc-Table": "invoices", "Cdc-Key": '{"id":999}',
                "Cdc-Reason": "message too large", "Cdc-Body-Dropped": "too large"})
        finally:
            await nc.close()

    asyncio.run(relay_dead_letter())
    code, data = trace_json(cfg, lost)
    assert code == 4 and data["events"][0]["dead_letters"][0]["by"] == "relay"
    assert data["events"][0]["dead_letters"][0]["reason"] == "message too large"
    assert data["events"][0]["stream"] is None and data["events"][0]["key"] == {"id": 999}
    by_key = cli("-c", str(cfg), "-a", "erp", "-t", "invoices", "-k", "id=999")
    assert by_key.returncode == 4 and "by the relay" in by_key.stdout

    # NATS down: a new row waits in the outbox
    outbox = cfg.parent / "state" / "outbox.db"
    server.stop()
    add_rows(db, 1)
    # outbox seq 1 was the table's schema-change event: row 31 is seq 32
    wait_for(lambda: appended_events(outbox) >= 32, what="row 31 in the outbox")
    pending = cli("-c", str(cfg), "-a", "erp", "-t", "invoices", "-k", "id=31")
    assert pending.returncode == 3, pending.stdout + pending.stderr
    assert "pending in the outbox" in pending.stdout and "NATS not reachable" in pending.stdout
    code, data = trace_json(cfg, data["events"][0]["id"])  # not in the outbox: cannot tell
    assert code == 5 and data["found"] is False
    code, data = trace_json(cfg, "-a", "erp", "-t", "invoices", "-k", "id=31")
    assert code == 3 and data["events"][0]["outbox"]["state"] == "pending"
    assert data["events"][0]["outbox"]["captured_at"] is not None
    # the id of a pending event finds it in the outbox
    code, again = trace_json(cfg, data["events"][0]["id"])
    assert code == 3 and again["events"][0]["outbox"]["seq"] == 32
    server.start()
