"""Schema versions of a MariaDB table captured from the binlog, end to end: real MariaDB
(row binlog, ``binlog_row_metadata=FULL``), the bridge as a process, real JetStream and
its schema registry bucket.

The snapshot and the binlog describe the table alike (the snapshot's rows and the first
streamed rows are one version), an ``ADD COLUMN`` mid-stream is version 2, whose
schema-change event comes before the first row written after it, and the registry
holds each version's columns as the table map tells them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats

from tests.harnesses import unique
from tests.harnesses.mysql_binlog import run_sql
from tests.helpers import BridgeProcess, StoredMessage, stream_messages, wait_for, write_config
from tests.services.mariadb import MariaDBServer
from tests.services.nats_server import NatsServer
from tests.test_mysql_binlog import TYPES_DDL, TYPES_ROW

BUCKET = "CDC_SCHEMAS"


def read_kv(url: str) -> dict[str, dict[str, Any]]:
    async def read() -> dict[str, dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(BUCKET)
            return {k: json.loads((await kv.get(k)).value or b"{}") for k in await kv.keys()}
        finally:
            await nc.close()

    return asyncio.run(read())


def test_add_column_mid_stream_is_version_2_before_its_rows(
        tmp_path: Path, nats_server: NatsServer, mariadb_binlog_server: MariaDBServer) -> None:
    server = mariadb_binlog_server
    db = unique("sch")
    run_sql(server, f"CREATE DATABASE {db}")
    run_sql(server, TYPES_DDL, TYPES_ROW, database=db)
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc",
                 "ack_timeout": "5s"},
        "adapters": [{"name": "erp", "type": "mysql_binlog",
                      "dsn": f"mysql://root@127.0.0.1:{server.port}", "tables": [f"{db}.t"],
                      "heartbeat_interval": "1s", "max_batch_delay": "20ms",
                      "server_id": 7700 + server.port % 100}]})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    prefix = f"cdc.erp.{db}.t."

    def rows(at_least: int) -> list[StoredMessage] | None:
        msgs = stream_messages(nats_server.url, schemas=True)
        return msgs if sum(m.subject.startswith(prefix) for m in msgs) >= at_least else None

    wait_for(lambda: rows(1), timeout_s=60, what="the snapshot row")
    run_sql(server, "INSERT INTO t (id, d, txt) VALUES (1, 1.5, 'before')", database=db)
    wait_for(lambda: rows(2), timeout_s=30, what="a streamed row")
    run_sql(server, "INSERT INTO t (id, txt) VALUES (2, 'same transaction, old look')",
            "ALTER TABLE t ADD COLUMN extra varchar(20) NULL",
            "INSERT INTO t (id, txt, extra) VALUES (3, 'new look', 'x')",
            "UPDATE t SET extra = 'y' WHERE id = 1", database=db)
    msgs: list[StoredMessage] = wait_for(lambda: rows(5), timeout_s=30, what="rows after ALTER")
    assert bridge.terminate() == 0, bridge.log()

    schema = [m for m in msgs if m.subject == f"cdc._schema.erp.{db}.t"]
    changes = [m for m in msgs if m.subject.startswith(prefix)]
    assert [m.body["data"]["new_version"] for m in schema] == [1, 2]
    assert schema[1].body["data"]["verdict"] == "full"
    assert [c["name"] for c in schema[1].body["data"]["diff"]["added"]] == ["extra"]
    versions = [(m.body["data"]["op"], m.body["data"]["source"]["schema_version"])
                for m in changes]
    # the snapshot and the binlog describe the unchanged table alike: one version
    assert versions == [("r", 1), ("c", 1), ("c", 1), ("c", 2), ("u", 2)]
    seq = {m.body["data"]["new_version"]: m.seq for m in schema}
    first_v2 = next(m.seq for m in changes if m.body["data"]["source"]["schema_version"] == 2)
    assert seq[1] < changes[0].seq and seq[2] < first_v2
    kv = read_kv(nats_server.url)
    key = f"erp.{db}.t"
    assert kv[f"{key}.latest"]["version"] == 2
    cols = {v: {c["name"]: c for c in kv[f"{key}.v{v}"]["columns"]} for v in (1, 2)}
    for m in changes:
        v = m.body["data"]["source"]["schema_version"]
        assert list(m.body["data"]["after"]) == list(cols[v])
        assert m.body["dataschema"] == f"nats-kv://{BUCKET}/{key}.v{v}"
    assert list(cols[2]) == [*cols[1], "extra"]
    assert cols[2]["extra"] == {"name": "extra", "source_type": "varchar(20)",
                                "json_type": "string", "nullable": True}
    one = cols[1]
    assert one["id"] == {"name": "id", "source_type": "bigint unsigned",
                         "json_type": "integer", "nullable": False}
    expected = {"d": ("decimal(30,10)", "string", None), "dt": ("datetime(6)", "string", None),
                "ts": ("timestamp(6)", "string", "date-time"), "j": ("json", "any", None),
                "e": ("enum('a','b')", "string", None), "s": ("set('x','y','z')", "array", None),
                "b": ("bit(10)", "string", None), "bl": ("blob", "string", "byte"),
                "f": ("float", "number", None), "tm": ("time(3)", "number", None),
                "dd": ("date", "string", "date"), "y": ("year", "integer", None),
                "txt": ("text", "string", None)}
    for name, (source_type, json_type, fmt) in expected.items():
        c = one[name]
        assert (c["source_type"], c["json_type"], c.get("format")) == (
            source_type, json_type, fmt), c
        assert c["nullable"] is True
    assert kv[f"{key}.v1"]["key"] == ["id"]
