"""Outbox tables relayed by logical replication (``type: postgres``, ``outbox_tables``).

Real PostgreSQL (``wal_level=logical``), the real bridge process, real JetStream:

- ``cdc_bridge.client.outbox.write_event`` in business transactions -> one message each on
  ``cdc.outbox.<aggregate_type>.<event_type>``, in commit order, byte for byte what the
  polling adapter (``type: outbox_table``) makes of the same row; insert + delete in one
  transaction still published; rollback -> nothing; updates, deletes and truncates of
  the outbox table -> nothing; rows present before the slot (not marked published) come
  from the snapshot; row changes of a captured table keep flowing beside them;
- a malformed row -> a dead letter with its reason, and the rest continues;
- ``kill -9`` twice inside a large transaction of outbox inserts (timed on the committed
  checkpoint), with small transactions going on: every event exactly once in the
  bridge's own outbox and in the stream, per-aggregate order kept;
- set-up errors name their fix (publication without the outbox table).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from pydantic import ValidationError

import cdc_bridge.adapters.registry  # noqa: F401  (registry first: it imports the adapters)
from cdc_bridge.adapters.contract import AdapterContext, ChangeBatch
from cdc_bridge.adapters.outbox_table import to_message
from cdc_bridge.adapters.postgres.adapter import PostgresAdapter
from cdc_bridge.adapters.postgres.config import PostgresConfig
from cdc_bridge.client.outbox import create_outbox_table, write_event
from cdc_bridge.kernel.errors import SourceSetupError
from cdc_bridge.outbox.writer import encode_batch
from tests.helpers import (
    BridgeProcess,
    appended_events,
    committed_checkpoint,
    wait_for,
)
from tests.services.nats_server import NatsServer
from tests.test_pg_adapter import (
    bridge_runner,  # noqa: F401  (fixture)
    pg_config,
    pg_dsn,  # noqa: F401  (fixture)
    sql,
    start_bridge,
    wait_stable,
)
from tests.test_relay import Stored, read_all

#: The polling adapter's SELECT: what ``to_message`` expects.
POLL_ROW = ("SELECT seq, id, aggregate_type, aggregate_id, event_type, payload::text, headers,"
            " created_at FROM cdc_outbox WHERE id = %s")


def all_msgs(url: str) -> list[Stored]:
    """Everything in the stream, the tables' schema-change events included."""
    for attempt in range(5):  # nats-py's last fetch may raise a bare TimeoutError
        try:
            return asyncio.run(read_all(url, schemas=True))
        except TimeoutError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def outbox_msgs(url: str) -> list[Stored]:
    return [m for m in all_msgs(url) if m.subject.startswith("cdc.outbox.")]


def wait_outbox(url: str, n: int, timeout_s: float = 60) -> list[Stored]:
    got: list[Stored] = wait_for(
        lambda: (m := outbox_msgs(url)) and len(m) >= n and m, timeout_s=timeout_s,
        what=f"{n} outbox messages")
    return got


def test_write_event_by_replication_beside_row_changes(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str,  # noqa: F811
        bridge_runner: list[BridgeProcess]) -> None:  # noqa: F811
    with psycopg.connect(pg_dsn) as conn, conn.transaction():
        create_outbox_table(conn)
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, status text)")
        # before the slot exists: one event not yet relayed, one already relayed
        waiting = write_event(conn, "order", 0, "imported", {"id": 0})
        done = write_event(conn, "order", 0, "old", {"id": 0})
        conn.execute("UPDATE cdc_outbox SET published_at = now() WHERE id = %s", (done,))
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["orders"],
                    outbox_tables=["cdc_outbox"])
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge.log")
    wait_for(lambda: "streaming from slot" in bridge.log(), what="streaming")
    expected, kept = [waiting], [waiting]
    with psycopg.connect(pg_dsn) as conn:
        for i in range(1, 31):
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (%s, 'new')", (i,))
                eid = write_event(conn, "order", i, "created", {"id": i},
                                  {"Trace-Id": f"t-{i}"}, delete=i % 2 == 0)
                expected.append(eid)
                if i % 2:
                    kept.append(eid)
                if i % 5 == 0:  # plain SQL: payload digits and a huge integer as written
                    eid = str(uuid.uuid4())
                    conn.execute(
                        "INSERT INTO cdc_outbox (id, aggregate_type, aggregate_id, event_type,"
                        " payload, headers) VALUES (%s, 'Order Line', %s, 'added.v2',"
                        " '{\"amount\": 12.50, \"n\": 123456789012345678901234567890}',"
                        " '{\"bad name\": \"x\", \"Nats-Msg-Id\": \"forged\"}')",
                        (eid, f"{i}-1"))
                    expected.append(eid)
                    kept.append(eid)
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
            rolled_back = write_event(conn, "order", 1, "paid", {"id": 1})
            raise RuntimeError("the service fails: everything rolls back")
    msgs = wait_outbox(nats_server.url, len(expected))
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == expected  # once each, in commit order
    assert rolled_back not in {m.headers["Nats-Msg-Id"] for m in msgs}
    # byte for byte what the polling adapter publishes for the same row
    by_id = {m.headers["Nats-Msg-Id"]: m for m in msgs}
    with psycopg.connect(pg_dsn) as conn:
        for eid in kept:
            row = conn.execute(POLL_ROW, (eid,)).fetchone()
            assert row is not None
            # (as the writer encodes it: with the trace context in body and headers)
            polled = encode_batch(ChangeBatch(messages=[to_message(row, "shop")]), "cdc")[0]
            got = by_id[eid]
            assert got.data == polled.payload, eid
            assert polled.subject == got.subject
            assert {k: v for k, v in got.headers.items() if k != "Nats-Msg-Id"
                    and not k.startswith("Nats-Expected-")} == dict(polled.headers or {})
    first = orjson.loads(by_id[expected[1]].data)
    assert by_id[expected[1]].subject == "cdc.outbox.order.created"
    assert first["id"] == expected[1] and first["source"] == "/cdc-bridge/shop"
    assert first["subject"] == "1" and first["aggregatetype"] == "order"
    assert first["data"] == {"id": 1} and first["time"].endswith("Z")
    assert by_id[expected[1]].headers["Trace-Id"] == "t-1"
    deleted = by_id[expected[2]]  # written with delete=True: gone from the table, published
    assert orjson.loads(deleted.data)["aggregateid"] == "2"
    line = next(m for m in msgs if m.subject == "cdc.outbox.Order_Line.added_v2")
    assert b'"data":{"n": 123456789012345678901234567890, "amount": 12.50}' in line.data
    # invalid header names dropped, the forged id ignored; the trace context added
    assert {h for h in line.headers if not h.startswith("Nats-Expected-")} == {
        "Nats-Msg-Id", "traceparent"}
    assert orjson.loads(by_id[waiting].data)["type"] == "imported"  # from the snapshot
    # updates, deletes and truncates of the outbox table are not events
    sql(pg_dsn, "UPDATE cdc_outbox SET published_at = now()",
        "DELETE FROM cdc_outbox WHERE aggregate_id = '1'", "TRUNCATE cdc_outbox",
        "UPDATE orders SET status = 'shipped' WHERE id = 3")
    with psycopg.connect(pg_dsn) as conn:
        marker = write_event(conn, "order", 3, "shipped", {"id": 3})
    msgs = wait_outbox(nats_server.url, len(expected) + 1)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [*expected, marker]
    everything = all_msgs(nats_server.url)
    rows = [(m.subject, orjson.loads(m.data)["data"]["after"]["id"]) for m in everything
            if m.subject.startswith("cdc.shop.")]
    assert rows == [("cdc.shop.public.orders.c", i) for i in range(1, 31)] + [
        ("cdc.shop.public.orders.u", 3)], "row changes of captured tables keep flowing"
    assert not [m for m in everything if "cdc_outbox" in m.subject]
    # nothing captured that JetStream's deduplication would have hidden
    assert appended_events(tmp_path / "state" / "outbox.db") == len(everything)
    assert bridge.terminate() == 0, bridge.log()


def test_malformed_row_is_a_dead_letter_and_the_rest_continues(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str,  # noqa: F811
        bridge_runner: list[BridgeProcess]) -> None:  # noqa: F811
    # an outbox table of the application's own making: text payload, no checks
    sql(pg_dsn, "CREATE SCHEMA app",
        "CREATE TABLE app.events (seq bigserial PRIMARY KEY, id uuid NOT NULL, "
        "aggregate_type text, aggregate_id text, event_type text, payload text, "
        "headers jsonb, created_at timestamptz NOT NULL DEFAULT now())")
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, outbox_tables=["app.events"])
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge.log")
    wait_for(lambda: "streaming from slot" in bridge.log(), what="streaming")
    good = [str(uuid.uuid4()) for _ in range(3)]
    insert = ("INSERT INTO app.events (id, aggregate_type, aggregate_id, event_type, payload,"
              " headers) VALUES (%s, %s, '7', 'created', %s, %s)")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(insert, (good[0], "order", '{"ok": 1}', None))
        conn.execute(insert, (str(uuid.uuid4()), "", '{"ok": 2}', None))
        conn.execute(insert, (str(uuid.uuid4()), "order", "not json", None))
        conn.execute(insert, (str(uuid.uuid4()), "order", '{"ok": 3}', '["not", "an object"]'))
        conn.commit()
        conn.execute(insert, (good[1], "order", '{"ok": 4}', '{"X-Ok": "yes"}'))
        conn.execute(insert, (good[2], "order", '{"ok": 5}', None))
        conn.commit()

    def dead() -> list[Stored]:
        return [m for m in asyncio.run(read_all(nats_server.url, "CDC_DLQ"))
                if m.subject == "cdc_dlq.shop"]

    letters = wait_for(lambda: len(d := dead()) >= 3 and d, what="3 dead letters")
    reasons = sorted(m.headers["Cdc-Reason"] for m in letters)
    assert reasons == ["app.events: aggregate_type is empty",
                       "app.events: headers is not a JSON object",
                       "app.events: payload is not JSON"]
    assert all(m.headers["Cdc-Table"] == "app.events" for m in letters)
    assert b"not json" in next(m.data for m in letters if b"not json" in m.data)
    msgs = wait_outbox(nats_server.url, 3)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == good
    assert msgs[1].headers["X-Ok"] == "yes"
    assert [orjson.loads(m.data)["data"]["ok"] for m in msgs] == [1, 4, 5]
    assert bridge.alive(), bridge.log()
    assert bridge.terminate() == 0, bridge.log()


def _big_id(g: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"big{g}".encode()).hexdigest()))


def _tx_done(outbox: Path) -> int:
    tx = (committed_checkpoint(outbox, "shop") or {}).get("tx")
    return int(tx["done"]) if tx else 0


def test_kill9_inside_a_large_outbox_transaction_exactly_once_in_order(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str,  # noqa: F811
        bridge_runner: list[BridgeProcess]) -> None:  # noqa: F811
    with psycopg.connect(pg_dsn) as conn:
        create_outbox_table(conn)
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, outbox_tables=["cdc_outbox"],
                    batch_size=500)
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge0.log")
    wait_for(lambda: "streaming from slot" in bridge.log(), what="streaming")
    big = 30_000
    # one transaction: 30 000 inserts over 20 aggregates, then it deletes them all (the
    # deletes are changes of the transaction too, ignored but counted)
    sql(pg_dsn, "INSERT INTO cdc_outbox (id, aggregate_type, aggregate_id, event_type, payload)"
        " SELECT md5('big' || g)::uuid, 'acct', (g % 20)::text, 'moved',"
        f" jsonb_build_object('n', g) FROM generate_series(1, {big}) g; "
        "DELETE FROM cdc_outbox")
    small: list[str] = []

    def writer() -> None:
        with psycopg.connect(pg_dsn) as conn:
            for k in range(1, 1501):
                with conn.transaction():
                    small.append(write_event(conn, "tick", k % 5, "tock", {"n": k},
                                             delete=k % 2 == 0))
                time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    outbox = tmp_path / "state" / "outbox.db"
    try:
        for round_ in range(2):  # kill while the big transaction is emitted in batches
            wait_for(lambda r=round_: _tx_done(outbox) >= 6000 * (r + 1), timeout_s=60,
                     interval_s=0.005, what="part of the big transaction committed")
            bridge.kill9()
            done = _tx_done(outbox)
            assert 0 < done < big, f"the kill must land mid-transaction ({done})"
            bridge = start_bridge(bridge_runner, cfg, tmp_path / f"bridge{round_ + 1}.log")
    finally:
        thread.join()
    total = big + len(small)
    wait_stable(nats_server.url, total, timeout_s=120)
    msgs = outbox_msgs(nats_server.url)
    ids = [m.headers["Nats-Msg-Id"] for m in msgs]
    assert len(ids) == len(set(ids)) == total, "each event once in the stream"
    assert set(ids) == {_big_id(g) for g in range(1, big + 1)} | set(small)
    # exactly once into the bridge's own outbox too: nothing re-captured after a kill
    assert appended_events(outbox) == total
    seen: dict[tuple[str, str], list[int]] = defaultdict(list)
    for m in msgs:
        ce: dict[str, Any] = orjson.loads(m.data)
        seen[(ce["aggregatetype"], ce["aggregateid"])].append(ce["data"]["n"])
    for (agg, agg_id), ns in seen.items():
        want = range(1, big + 1) if agg == "acct" else range(1, 1501)
        assert ns == [n for n in want if str(n % (20 if agg == "acct" else 5)) == agg_id], \
            f"order of {agg} {agg_id}"
    assert bridge.terminate() == 0, bridge.log()


def test_config_and_setup_errors_name_their_fix(pg_dsn: str) -> None:  # noqa: F811
    with pytest.raises(ValidationError, match="tables, outbox_tables or both"):
        PostgresConfig(name="shop", type="postgres", dsn=pg_dsn)
    with pytest.raises(ValidationError, match=r"public\.cdc_outbox listed in both"):
        PostgresConfig(name="shop", type="postgres", dsn=pg_dsn, tables=["cdc_outbox"],
                       outbox_tables=["public.cdc_outbox"])
    with psycopg.connect(pg_dsn) as conn:
        create_outbox_table(conn)
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("CREATE TABLE thin (seq int PRIMARY KEY, id uuid, payload jsonb)")
        conn.execute("CREATE PUBLICATION shop_pub FOR TABLE orders")

    def init(**block: Any) -> list[str]:
        cfg = PostgresConfig(name="shop", type="postgres", dsn=pg_dsn, **block)
        return asyncio.run(PostgresAdapter(cfg, AdapterContext(Path("."))).init())

    with pytest.raises(SourceSetupError) as err:
        init(tables=["orders"], outbox_tables=["cdc_outbox"], publication="shop_pub",
             publication_mode="existing")
    assert "ALTER PUBLICATION shop_pub ADD TABLE public.cdc_outbox;" in str(err.value)
    with pytest.raises(SourceSetupError, match=r"lacks the column.*aggregate_type"):
        init(outbox_tables=["thin"])
    with pytest.raises(SourceSetupError, match=r"outbox table public\.nope .* not found"):
        init(outbox_tables=["nope"])
    # a managed publication gets the outbox table (and the captured tables)
    actions = init(tables=["orders"], outbox_tables=["cdc_outbox"])
    assert any("created publication cdc_bridge_shop" in a for a in actions)
    published = {r[0] for r in sql(pg_dsn, "SELECT tablename FROM pg_publication_tables "
                                   "WHERE pubname = 'cdc_bridge_shop'")}
    assert published == {"orders", "cdc_outbox"}
