"""Per-key order and exactly-once effects of cdc_bridge.client.consumer, with real JetStream:
transient failures on random keys, 8 concurrent handlers, two instances on one durable,
kill -9 of an instance mid-batch, slow handlers, dead-letter duplicates, redrive, pruning."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
import yaml
from click.testing import CliRunner
from nats.js import api

from cdc_bridge.cli.main import main as cli_main
from cdc_bridge.client.consumer import Consumer, ConsumerSettings, Event
from cdc_bridge.client.seen import MemorySeenStore, PostgresSeenStore, SqliteSeenStore
from cdc_bridge.kernel.events import ChangeEvent
from tests.helpers import read_stream
from tests.services.nats_server import NatsServer

KEYS = 12
VERSIONS = 25


def version(k: int, v: int) -> ChangeEvent:
    return ChangeEvent(adapter="erp", table="orders", op="u", position=f"o:{k}:{v}",  # type: ignore[arg-type]
                       key={"id": k}, after={"id": k, "v": v}, ts_ms=1_700_000_000_000)


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[nats.js.JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    ctx = nc.jetstream()
    await ctx.add_stream(api.StreamConfig(name="CDC", subjects=["cdc.>"], max_age=3600.0,
                                          duplicate_window=60.0))
    yield ctx
    await nc.close()


async def publish_versions(ctx: nats.js.JetStreamContext) -> None:
    for v in range(VERSIONS):  # interleaved keys: v0 of every key, then v1, ...
        for k in range(KEYS):
            ev = version(k, v)
            await ctx.publish(ev.subject("cdc"), ev.encode(), headers={"Nats-Msg-Id": ev.id})


def flaky(event: Event, rate: float = 0.25) -> bool:
    """Deterministic transient failure: about ``rate`` of first and second deliveries."""
    if event.deliveries > 2:
        return False
    return zlib.crc32(f"{event.id}:{event.deliveries}".encode()) % 1000 < rate * 1000


def settings(url: str, **kw: object) -> ConsumerSettings:
    base: dict[str, object] = {"servers": [url], "durable": "orders", "stream": "CDC",
                               "filter_subject": "cdc.erp.>", "backoff_s": (0.05, 0.1),
                               "max_deliveries": 20, "ack_wait_s": 3.0, "batch": 10,
                               "concurrency": 8}
    base.update(kw)
    return ConsumerSettings(**base)  # type: ignore[arg-type]


def assert_in_order_once(applied: list[tuple[int, int]]) -> None:
    by_key: dict[int, list[int]] = {}
    for k, v in applied:
        by_key.setdefault(k, []).append(v)
    assert sorted(by_key) == list(range(KEYS))
    for k, vs in by_key.items():
        assert vs == list(range(VERSIONS)), f"key {k} applied as {vs}"


async def wait_until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _pg_stores(request: pytest.FixtureRequest) -> tuple[str, dict[str, PostgresSeenStore]]:
    """A database of the test's own; one store per instance, sharing it (row locks)."""
    server = request.getfixturevalue("postgres_server")
    name = "seen_" + uuid.uuid4().hex[:10]
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    dsn = str(server.dsn_for(name))
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("CREATE TABLE effects (n bigserial, k int, v int, id text UNIQUE)")
    return dsn, {i: await PostgresSeenStore.open(dsn, "orders", pool_size=4) for i in "ab"}


def _committed_effects(db: Path, dsn: str) -> list[tuple[int, int]]:
    if dsn:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT k, v FROM effects ORDER BY n").fetchall()
    else:
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT k, v FROM effects ORDER BY rowid").fetchall()
    return [(int(k), int(v)) for k, v in rows]


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgres"])
async def test_two_instances_keep_per_key_order_through_transient_failures(
        nats_server: NatsServer, js: nats.js.JetStreamContext, tmp_path: Path,
        store: str, request: pytest.FixtureRequest) -> None:
    await publish_versions(js)
    applied: list[tuple[int, int]] = []
    running: set[int] = set()
    overlap = [0]
    db = tmp_path / "svc.db"
    shared = MemorySeenStore()
    if store == "sqlite":
        setup = sqlite3.connect(db)
        setup.execute("CREATE TABLE effects (k INTEGER, v INTEGER, id TEXT UNIQUE)")
        setup.commit()
        setup.close()
    dsn, pg = await _pg_stores(request) if store == "postgres" else ("", {})

    def make(name: str) -> Consumer:
        seen: Any = (SqliteSeenStore(db, "orders") if store == "sqlite" else
                     pg[name] if store == "postgres" else shared)

        async def handle(event: Event) -> None:
            k, v = event.key["id"], event.after["v"]  # type: ignore[index]
            assert k not in running, f"two handlers at once for key {k}"
            running.add(k)
            overlap[0] = max(overlap[0], len(running))
            try:
                await asyncio.sleep(0.001 * (v % 3))
                if flaky(event):
                    raise RuntimeError(f"transient failure on key {k}")
                if isinstance(seen, SqliteSeenStore):
                    seen.conn.execute("INSERT INTO effects VALUES (?, ?, ?)", (k, v, event.id))
                elif isinstance(seen, PostgresSeenStore):  # in the handler's transaction
                    await seen.conn.execute("INSERT INTO effects (k, v, id) VALUES "
                                            "(%s, %s, %s)", (k, v, event.id))
                applied.append((k, v))
            finally:
                running.discard(k)
        return Consumer(settings(nats_server.url), handle, seen)

    a, b = make("a"), make("b")
    tasks = [asyncio.create_task(c.run(fetch_timeout_s=0.3)) for c in (a, b)]
    try:
        await wait_until(lambda: len(applied) >= KEYS * VERSIONS, 60, "every event applied")
        await asyncio.sleep(0.3)  # a late duplicate would show here
    finally:
        for c in (a, b):
            c.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert_in_order_once(applied)
    assert a.stats.handled > 0 and b.stats.handled > 0, "both instances took part"
    assert a.stats.failures + b.stats.failures > 10
    assert a.stats.dead_lettered + b.stats.dead_lettered == 0
    if store == "memory":
        assert overlap[0] > 1, "different keys ran concurrently"
    else:  # the effects committed with the seen marks: once each, in order per key
        for s in pg.values():
            await s.close()
        assert_in_order_once(_committed_effects(db, dsn))
    info = await js.consumer_info("CDC", "orders")
    assert info.num_ack_pending == 0 and info.num_pending == 0


SERVICE = """
import asyncio, logging, sys
from cdc_bridge.client.consumer import Consumer, ConsumerSettings
from cdc_bridge.client.seen import SqliteSeenStore

url, db = sys.argv[1], sys.argv[2]
logging.basicConfig(level=logging.WARNING)
seen = SqliteSeenStore(db, "orders")

async def handle(event):
    seen.conn.execute("INSERT INTO effects VALUES (?, ?, ?)",
                      (event.key["id"], event.after["v"], event.id))
    await asyncio.sleep(0.004)

settings = ConsumerSettings(servers=[url], durable="orders", filter_subject="cdc.erp.>",
                            backoff_s=(0.05,), max_deliveries=20, ack_wait_s=2.0, batch=10,
                            concurrency=8)
asyncio.run(Consumer(settings, handle, seen).run(fetch_timeout_s=0.3))
"""


def _effects(db: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(db, timeout=30) as conn:
        return [(int(k), int(v)) for k, v in
                conn.execute("SELECT k, v FROM effects ORDER BY rowid").fetchall()]


async def test_kill_9_of_an_instance_mid_batch_keeps_order_and_once(
        nats_server: NatsServer, js: nats.js.JetStreamContext, tmp_path: Path) -> None:
    await publish_versions(js)
    db = tmp_path / "svc.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE effects (k INTEGER, v INTEGER, id TEXT UNIQUE)")
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(script), nats_server.url, str(db)],
                                env=env, stderr=subprocess.PIPE, start_new_session=True)

    procs = [start(), start()]
    try:
        await wait_until(lambda: len(_effects(db)) >= 60, 40, "60 effects")
        procs[0].send_signal(signal.SIGKILL)  # mid-batch: it holds fetched messages
        procs[0].wait()
        procs.append(start())
        total = KEYS * VERSIONS
        await wait_until(lambda: len(_effects(db)) >= total, 60, "every effect")
        await asyncio.sleep(2.5)  # past ack_wait: a redelivered duplicate would show
        assert_in_order_once(_effects(db))
        for p in procs[1:]:
            assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def test_slow_handler_keeps_its_message_and_is_reported_stuck(
        nats_server: NatsServer, js: nats.js.JetStreamContext) -> None:
    ev = version(1, 0)
    await js.publish(ev.subject("cdc"), ev.encode(), headers={"Nats-Msg-Id": ev.id})
    deliveries: list[int] = []

    async def handle(event: Event) -> None:
        deliveries.append(event.deliveries)
        await asyncio.sleep(2.6)

    consumer = Consumer(settings(nats_server.url, ack_wait_s=1.0, stuck_after_s=1.2), handle)
    task = asyncio.create_task(consumer.run(fetch_timeout_s=0.3))
    try:
        await wait_until(lambda: consumer.stats.handled == 1, 20, "the slow handler")
        await asyncio.sleep(1.2)  # a redelivery (ack_wait 1 s) would arrive here
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 20)
    assert deliveries == [1]
    assert consumer.stats.in_progress_sent >= 2
    assert consumer.stats.stuck == 1
    assert consumer.health()["ready"] is False


def _write_config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{tmp_path}/x.db",
                      "tables": [{"name": "t", "mode": "incrementing",
                                  "incrementing_column": "id"}]}]}))
    return path


async def test_poison_dead_letters_once_then_redrive(
        nats_server: NatsServer, js: nats.js.JetStreamContext, tmp_path: Path) -> None:
    ev = version(7, 0)
    # the same event stored twice (two message ids): both copies fail for good
    for msg_id in (ev.id, "second-copy"):
        await js.publish(ev.subject("cdc"), ev.encode(), headers={"Nats-Msg-Id": msg_id})
    after = version(7, 1)
    await js.publish(after.subject("cdc"), after.encode(), headers={"Nats-Msg-Id": after.id})
    applied: list[int] = []
    broken = [True]

    async def handle(event: Event) -> None:
        if event.after["v"] == 0 and broken[0]:  # type: ignore[index]
            raise ValueError("cannot apply v0")
        applied.append(event.after["v"])  # type: ignore[index]

    consumer = Consumer(settings(nats_server.url, max_deliveries=2), handle)
    task = asyncio.create_task(consumer.run(fetch_timeout_s=0.3))
    try:
        await wait_until(lambda: applied == [1], 20, "v1 after v0's dead letters")
        assert consumer.stats.dead_lettered == 1
        assert consumer.stats.dead_letter_duplicates == 1
        dead = await read_stream(nats_server.url, stream="CDC_DLQ")
        assert len(dead) == 1 and dead[0].subject == "cdc_dlq._consumer.orders"
        h = dead[0].headers
        assert h["Cdc-Original-Seq"] == "1" and h["Cdc-Deliveries"] == "2"
        assert "cannot apply v0" in h["Cdc-Reason"] and h["Cdc-Original-Id"] == ev.id
        # nothing on cdc.> carries a dead letter
        assert all(not m.subject.startswith("cdc_dlq") for m in
                   await read_stream(nats_server.url))
        # redrive through the CLI: back on its original subject, out of the DLQ
        broken[0] = False
        cfg = _write_config(tmp_path, nats_server.url)
        runner = CliRunner()
        listed = await asyncio.to_thread(runner.invoke, cli_main, ["dlq", "list", "-c", str(cfg)])
        assert listed.exit_code == 0 and "cannot apply v0" in listed.output, listed.output
        shown = await asyncio.to_thread(runner.invoke, cli_main,
                                        ["dlq", "show", "-c", str(cfg), str(dead[0].seq)])
        assert "Cdc-Reason: ValueError: cannot apply v0" in shown.output, shown.output
        redriven = await asyncio.to_thread(runner.invoke, cli_main,
                                           ["dlq", "redrive", "-c", str(cfg), "--all"])
        assert redriven.exit_code == 0 and "redrove 1" in redriven.output, redriven.output
        await wait_until(lambda: applied == [1, 0], 20, "the redriven v0")
        assert await read_stream(nats_server.url, stream="CDC_DLQ") == []
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 20)


async def test_seen_ids_are_pruned_by_retention(
        nats_server: NatsServer, js: nats.js.JetStreamContext, tmp_path: Path) -> None:
    for k in range(3):
        ev = version(k, 0)
        await js.publish(ev.subject("cdc"), ev.encode(), headers={"Nats-Msg-Id": ev.id})
    seen = SqliteSeenStore(tmp_path / "seen.db", "orders")

    async def handle(event: Event) -> None:
        return None

    default = Consumer(settings(nats_server.url, durable="other"), handle, MemorySeenStore())
    await default.run(stop_when_idle=True, fetch_timeout_s=0.3)
    assert default._retention_s == 3600.0 + 60.0  # the stream's max_age + duplicate window
    consumer = Consumer(settings(nats_server.url, seen_retention_s=0.3), handle, seen)
    await consumer.run(stop_when_idle=True, fetch_timeout_s=0.3)
    assert consumer.stats.handled == 3
    count = "SELECT (SELECT COUNT(*) FROM cdc_seen) + (SELECT COUNT(*) FROM cdc_key_seq)"
    assert seen.conn.execute(count).fetchone()[0] == 6
    await asyncio.sleep(0.4)
    assert await consumer.prune(floor=3) == 6
    assert seen.conn.execute(count).fetchone()[0] == 0
