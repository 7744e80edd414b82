"""Routed outbox events with a declared schema: ``write_event(..., schema_version=,
dataschema=)`` in a service's PostgreSQL transaction -> ``type: outbox_table`` in the real
bridge process -> the CloudEvent on JetStream carries ``dataschema`` and
``schemaversion``; an event without them is published exactly as before.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import psycopg
import pytest

from cdc_bridge.client.outbox import create_outbox_table, write_event
from tests.helpers import BridgeProcess, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.services.postgres import PostgresServer
from tests.test_outbox_table import fresh_db, outbox_msgs

pytestmark = pytest.mark.service

URI = "https://schemas.example.com/order/paid/3.json"


def test_declared_schema_is_published(tmp_path: Path, nats_server: NatsServer,
                                      postgres_server: PostgresServer) -> None:
    dsn = fresh_db(postgres_server)
    with psycopg.connect(dsn) as conn:
        with conn.transaction():
            create_outbox_table(conn)
        with conn.transaction():
            declared = write_event(conn, "order", 7, "paid", {"id": 7, "amount": "1.50"},
                                   {"Trace-Id": "t-7"}, schema_version=3, dataschema=URI)
            only_version = write_event(conn, "order", 8, "paid", {"id": 8},
                                       schema_version=1)
            plain = write_event(conn, "order", 9, "paid", {"id": 9})
        with pytest.raises(ValueError):
            write_event(conn, "order", 1, "paid", {}, schema_version=0)
        with pytest.raises(ValueError):
            write_event(conn, "order", 1, "paid", {}, dataschema="not a uri")
        with pytest.raises(ValueError):
            write_event(conn, "order", 1, "paid", {}, {"Cdc-Schema-Version": "2"})
        conn.rollback()
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [{"name": "shop-outbox", "type": "outbox_table", "dsn": dsn,
                      "poll_interval": "100ms"}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        msgs = wait_for(lambda: (m := outbox_msgs(nats_server.url)) and len(m) >= 3 and m,
                        what="3 outbox events", timeout_s=60)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    by_id = {m.headers["Nats-Msg-Id"]: m for m in msgs}
    assert list(by_id) == [declared, only_version, plain]

    first = orjson.loads(by_id[declared].data)
    assert first["dataschema"] == URI and first["schemaversion"] == 3
    assert first["data"] == {"id": 7, "amount": "1.50"}
    assert by_id[declared].headers["Trace-Id"] == "t-7"
    assert not {"Cdc-Schema-Version", "Cdc-Dataschema"} & set(by_id[declared].headers)

    second = orjson.loads(by_id[only_version].data)
    assert second["schemaversion"] == 1 and "dataschema" not in second

    third = orjson.loads(by_id[plain].data)
    assert "schemaversion" not in third and "dataschema" not in third
    assert set(third) - {"traceparent"} == {
        "specversion", "id", "source", "type", "subject", "datacontenttype", "time",
        "aggregatetype", "aggregateid", "data"}
