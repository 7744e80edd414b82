"""deploy/nats/nats-single.conf on a real nats-server: the ``reader`` user that
downstream services get can consume the bridge's stream with the client library and
dead-letter into it and resolve claim checks (large events in the object store), and
cannot delete, purge or write the bridge's streams."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from cdc_bridge.client.consumer import Consumer, ConsumerSettings, Event
from cdc_bridge.client.seen import MemorySeenStore
from cdc_bridge.kernel.events import ChangeEvent
from cdc_bridge.kernel.wire import CLAIM_OBJECT, MSG_ID
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.relay.claims import reference_message
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port

CONF = Path(__file__).resolve().parent.parent / "deploy" / "nats" / "nats-single.conf"


def shipped_config(port: int) -> str:
    """The shipped file with this test's port, store and passwords (nothing else)."""
    text = CONF.read_text()
    text = re.sub(r"(?m)^listen: .*$", f"listen: 127.0.0.1:{port}", text)
    text = re.sub(r"(?m)^http: .*$", "", text)
    text = re.sub(r"(?m)^\s*store_dir: \S+$", "", text)  # the fixture passes -sd
    for var, value in (("BRIDGE_PASSWORD", "bpw"), ("READER_PASSWORD", "rpw"),
                       ("SYS_PASSWORD", "spw")):
        text = text.replace(f"${var}", f'"{value}"')
    return text


@pytest.fixture
def accounts_server(tmp_path: Path) -> Iterator[NatsServer]:
    port = free_port()
    server = NatsServer(tmp_path / "nats", port=port,
                        config=shipped_config(port))
    server.start()
    yield server
    server.stop()


def url(server: NatsServer, user: str, password: str) -> str:
    return server.url.replace("nats://", f"nats://{user}:{password}@", 1)


async def test_reader_consumes_and_cannot_touch_the_bridges_streams(
        accounts_server: NatsServer) -> None:
    bridge = await nats.connect(url(accounts_server, "bridge", "bpw"))
    bjs = bridge.jetstream()
    await bjs.add_stream(api.StreamConfig(name="CDC", subjects=["cdc.>"]))
    await bjs.add_stream(api.StreamConfig(name="CDC_DLQ", subjects=["cdc_dlq.>"]))
    for i in (1, 2, 3):
        ev = ChangeEvent(adapter="erp", table="invoices", op="c", position=f"p{i}",
                         key={"id": i}, after={"id": i}, ts_ms=1_700_000_000_000)
        await bjs.publish(ev.subject("cdc"), ev.encode(), headers={"Nats-Msg-Id": ev.id})
    # a large event as the relay sends it: the body in the claim-check bucket, a reference
    # in the stream; the reader must be able to fetch it
    big = ChangeEvent(adapter="erp", table="invoices", op="c", position="p4", key={"id": 4},
                      after={"id": 4, "pdf": "x" * 300_000}, ts_ms=1_700_000_000_000)
    store = await bjs.create_object_store("CDC_CLAIMS")
    ref = reference_message(OutboxMessage(big.id, big.subject("cdc"), big.encode()),
                            "CDC_CLAIMS")
    assert ref.headers is not None
    await store.put(ref.headers[CLAIM_OBJECT], big.encode())
    await bjs.publish(ref.subject, ref.payload, headers={**ref.headers, MSG_ID: big.id})

    handled: list[int] = []
    done = asyncio.Event()

    async def handler(event: Event) -> None:
        if event.key == {"id": 2}:
            raise ValueError("never applies")
        handled.append(event.key["id"])  # type: ignore[index]
        if event.key == {"id": 4}:
            assert event.after is not None and len(event.after["pdf"]) == 300_000

    consumer = Consumer(ConsumerSettings(
        servers=[url(accounts_server, "reader", "rpw")], durable="billing",
        filter_subject="cdc.erp.>", max_deliveries=1, backoff_s=(0.1,)), handler,
        MemorySeenStore())

    async def watch() -> None:
        while not (len(handled) == 3 and consumer.stats.dead_lettered == 1):
            await asyncio.sleep(0.1)
        done.set()

    task = asyncio.create_task(consumer.run(fetch_timeout_s=0.3))
    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        consumer.stop()
        watcher.cancel()
        await asyncio.wait_for(task, 10)
    assert sorted(handled) == [1, 3, 4]
    assert consumer.stats.claims_resolved == 1
    assert (await bjs.stream_info("CDC_DLQ")).state.messages == 1  # the reader's dead letter

    reader = await nats.connect(url(accounts_server, "reader", "rpw"))
    jsm = reader.jsm()
    attempts: dict[str, Callable[[], Awaitable[object]]] = {
        "delete": lambda: jsm.delete_stream("CDC"),
        "purge": lambda: jsm.purge_stream("CDC"),
        "update": lambda: jsm.update_stream(api.StreamConfig(name="CDC",
                                                             subjects=["cdc.>", "other.>"])),
        "delete another's consumer": lambda: jsm.delete_consumer("CDC", "billing"),
        "write": lambda: reader.jetstream().publish("cdc.erp._.invoices.c", b"{}",
                                                    timeout=1),
    }
    for what, attempt in attempts.items():
        try:  # a denied request gets no answer (the server logs a permissions violation)
            await asyncio.wait_for(attempt(), 1.5)
        except (TimeoutError, nats.errors.TimeoutError, nats.js.errors.Error,
                nats.errors.NoRespondersError):
            continue
        pytest.fail(f"the reader user could {what} on the bridge's stream")
    await reader.close()
    info = await bjs.stream_info("CDC")
    assert info.state.messages == 4 and info.config.subjects == ["cdc.>"]
    assert "billing" in [c.name for c in await bridge.jsm().consumers_info("CDC")]
    await bridge.close()
