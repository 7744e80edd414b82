"""Large events by claim check, against a real nats-server (README, "Large events").

End to end: a sql_poll source (SQLite) with a 2.2 MB text value, a bridge process, the
client Consumer: the stream holds a small reference in the row's place (same id and
subject, between its neighbours), the bucket holds the body, the handler gets the whole
value, and the next update of that row arrives the same way. In process: a relay that
stopped between the put and the publish (the object is there, the reference is not)
puts nothing twice and publishes once, also when the rows are captured again; a
reference whose object is gone is the consumer's dead letter; with claim checks off, the
dead letter of an oversized event says what it was (adapter, table, key, position,
reason), and the dead letter of an oversized dead letter stays on its subject with its
reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import nats
import orjson
import sqlalchemy as sa

from cdc_bridge.client.consumer import Consumer, ConsumerSettings, Event
from cdc_bridge.client.seen import MemorySeenStore
from cdc_bridge.kernel.events import ChangeEvent
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.relay.claims import ClaimChecker
from cdc_bridge.relay.publisher import Publisher
from tests.helpers import BridgeProcess, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.test_relay import make_msgs, nats_cfg, read_all, running

BIG = 2_200_000


def _big_text(tag: str) -> str:
    return (tag * (BIG // len(tag) + 1))[:BIG]


async def _consume(url: str, durable: str) -> tuple[list[Event], Consumer]:
    got: list[Event] = []

    async def handle(event: Event) -> None:
        got.append(event)

    consumer = Consumer(ConsumerSettings(servers=[url], durable=durable,
                                         filter_subject="cdc.erp.>", backoff_s=(0.2,),
                                         max_deliveries=2), handle, MemorySeenStore())
    await asyncio.wait_for(consumer.run(stop_when_idle=True, fetch_timeout_s=0.3), 60)
    return got, consumer


async def _object_info(url: str, bucket: str, name: str) -> object:
    nc = await nats.connect(url)
    try:
        return await (await nc.jetstream().object_store(bucket)).get_info(name)
    finally:
        await nc.close()


def test_a_large_row_reaches_the_consumer_whole_in_its_place(tmp_path: Path,
                                                             nats_server: NatsServer) -> None:
    source = sa.create_engine(f"sqlite:///{tmp_path / 'source.db'}")
    meta = sa.MetaData()
    notes = sa.Table("notes", meta, sa.Column("id", sa.Integer, primary_key=True),
                     sa.Column("body", sa.Text), sa.Column("updated_at", sa.DateTime))
    meta.create_all(source)
    start = dt.datetime(2024, 1, 1)
    with source.begin() as c:
        c.execute(notes.insert(), [
            {"id": 1, "body": "small one", "updated_at": start},
            {"id": 2, "body": _big_text("first "), "updated_at": start},
            {"id": 3, "body": "small three", "updated_at": start}])
    config = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "ack_timeout": "3s"},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": str(source.url),
                      "poll_interval": "100ms", "lag_window": "1s",
                      "tables": [{"name": "notes", "mode": "timestamp+incrementing",
                                  "timestamp_column": "updated_at",
                                  "incrementing_column": "id"}]}],
    })
    bridge = BridgeProcess(config, tmp_path / "bridge.log")
    bridge.start()
    try:
        msgs = wait_for(lambda: (m := stream_messages(nats_server.url)) and len(m) >= 3 and m,
                        30, 0.3, "the three rows in the stream")
        with source.begin() as c:  # the next change of the large row
            c.execute(notes.update().where(notes.c.id == 2).values(
                body=_big_text("second "), updated_at=dt.datetime.now()))
        msgs = wait_for(lambda: (m := stream_messages(nats_server.url)) and len(m) >= 4 and m,
                        30, 0.3, "the update in the stream")
    finally:
        assert bridge.terminate() == 0, bridge.log()[-3000:]
    assert [m.body["data"]["key"]["id"] for m in msgs] == [1, 2, 3, 2]  # the row's place
    for ref in (msgs[1], msgs[3]):
        assert ref.headers["Nats-Msg-Id"] == ref.body["id"]  # the event's own id
        assert ref.subject.startswith("cdc.erp._.notes.")
        assert ref.headers["Cdc-Claim-Bucket"] == "CDC_CLAIMS"
        assert ref.headers["Cdc-Claim-Object"] == ref.body["id"]
        assert int(ref.headers["Cdc-Claim-Size"]) > BIG
        assert "after" not in ref.body["data"]  # small: the images are in the bucket
        assert len(orjson.dumps(ref.body)) < 4096
        info = asyncio.run(_object_info(nats_server.url, "CDC_CLAIMS", ref.body["id"]))
        assert getattr(info, "size", None) == int(ref.headers["Cdc-Claim-Size"])
    assert "Cdc-Claim-Object" not in msgs[0].headers
    assert msgs[3].body["data"]["op"] == "u"

    got, consumer = asyncio.run(_consume(nats_server.url, "svc"))
    got.sort(key=lambda e: e.sequence)  # (handled concurrently across keys)
    assert [e.key for e in got] == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 2}]
    assert [(e.after or {}).get("body") for e in got] == [
        "small one", _big_text("first "), "small three", _big_text("second ")]
    assert [e.id for e in got] == [m.body["id"] for m in msgs]
    assert consumer.stats.claims_resolved == 2 and consumer.stats.dead_lettered == 0


def _big_event(i: int, size: int = BIG) -> OutboxMessage:
    ev = ChangeEvent(adapter="erp", table="notes", op="u", position=f"lsn:{i}",
                     key={"id": i}, after={"id": i, "body": "z" * size}, ts_ms=1_700_000_000_000)
    eid, subject, body = ev.outbox_parts("cdc")
    return OutboxMessage(eid, subject, body, None, int(time.time() * 1000))


async def test_a_relay_stopped_between_put_and_publish_neither_loses_nor_duplicates(
        tmp_path: Path, nats_server: NatsServer) -> None:
    cfg = nats_cfg(nats_server.url)
    big = _big_event(7)
    # the first run put the body, then died before its reference was published
    pub = Publisher(cfg)
    await pub.connect()
    await ClaimChecker(cfg).check_in(pub.js, big)
    await pub.close()
    before = await _object_info(nats_server.url, "CDC_CLAIMS", big.msg_id)
    rows = [*(_big_event(i, 10) for i in range(3)), big, *(_big_event(i, 10) for i in range(3, 6))]
    async with running(tmp_path / "o.db", cfg) as r:
        await r.append(rows)
        await r.drained()
        await r.append(rows)  # captured again (a source re-read after a crash)
        await r.drained()
        assert r.relay.stats.published == len(rows)  # the second time: duplicates
    stored = await read_all(nats_server.url)
    assert [m.headers["Nats-Msg-Id"] for m in stored] == [m.msg_id for m in rows]
    after = await _object_info(nats_server.url, "CDC_CLAIMS", big.msg_id)
    assert getattr(after, "nuid", 1) == getattr(before, "nuid", 2)  # not put again

    # the object expires before a consumer gets to it: its dead letter, not a skip
    nc = await nats.connect(nats_server.url)
    await (await nc.jetstream().object_store("CDC_CLAIMS")).delete(big.msg_id)
    await nc.close()
    settings = ConsumerSettings(servers=[nats_server.url], durable="late",
                                filter_subject="cdc.erp.>", backoff_s=(0.2,))
    handled: list[str] = []

    async def handle(event: Event) -> None:
        handled.append(event.id)

    consumer = Consumer(settings, handle, MemorySeenStore())
    await asyncio.wait_for(consumer.run(stop_when_idle=True, fetch_timeout_s=0.3), 30)
    dlq = [m for m in await read_all(nats_server.url, "CDC_DLQ")
           if m.subject == "cdc_dlq._consumer.late"]
    assert len(dlq) == 1 and dlq[0].headers["Cdc-Original-Id"] == big.msg_id
    assert "gone" in dlq[0].headers["Cdc-Reason"]
    assert consumer.stats.claims_unresolved == 1
    assert len(handled) == 6 and big.msg_id not in handled


async def test_with_claim_checks_off_dead_letters_say_what_the_event_was(
        tmp_path: Path, nats_server: NatsServer) -> None:
    cfg = nats_cfg(nats_server.url, claim_checks={"enabled": False})
    big = _big_event(9)
    record = b"a,b,c," + b"x" * (1 << 20)  # a source's dead letter, itself too large
    oversized_input = OutboxMessage("dl-1", "cdc_dlq.exports", record,
                                    {"Cdc-Reason": "record longer than 1048576 bytes",
                                     "Cdc-Adapter": "exports", "Cdc-Position": "f1@0"},
                                    int(time.time() * 1000))
    async with running(tmp_path / "o.db", cfg) as r:
        await r.append([*make_msgs(0, 2), big, oversized_input, *make_msgs(2, 2)])
        await r.drained()
        assert r.relay.stats.dead_lettered == 2
    assert len(await read_all(nats_server.url)) == 4
    dlq = {m.headers["Cdc-Original-Id"]: m for m in await read_all(nats_server.url, "CDC_DLQ")}
    assert set(dlq) == {big.msg_id, "dl-1"}
    h = dlq[big.msg_id].headers
    assert dlq[big.msg_id].subject == "cdc_dlq.erp"
    assert (h["Cdc-Adapter"], h["Cdc-Table"], h["Cdc-Key"], h["Cdc-Position"]) == (
        "erp", "notes", '{"id":9}', "lsn:9")
    assert "max_payload" in h["Cdc-Reason"] and "Cdc-Body-Dropped" in h
    assert dlq[big.msg_id].data == b""
    again = dlq["dl-1"]
    assert again.subject == "cdc_dlq.exports"  # not a dead letter of a dead letter
    assert again.headers["Cdc-Reason"] == "record longer than 1048576 bytes"
    assert again.headers["Cdc-Position"] == "f1@0"
    assert "max_payload" in again.headers["Cdc-Body-Truncated"]
    assert 0 < len(again.data) < len(record) and record.startswith(again.data)
