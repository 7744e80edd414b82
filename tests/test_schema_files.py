"""files source: the header is the table's look, and a header that gains a column is a new
schema version before the rows read under it.

One bridge process, two adapters: ``prices`` compares snapshot extracts (the second
extract has a ``currency`` column: every row changes, a ``u`` under v2) and ``drops``
reads dropped CSV files (the second file's header has one more column). A JSON lines
adapter has no declared layout: its events carry no version.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import BridgeProcess, StoredMessage, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer

pytestmark = pytest.mark.service


def _versions(msgs: list[StoredMessage], adapter: str, table: str
              ) -> tuple[dict[int, list[str]], dict[int, int], list[StoredMessage]]:
    """Each version's columns, the stream seq of its schema event, and the row events."""
    schema = [m for m in msgs if m.subject == f"cdc._schema.{adapter}._.{table}"]
    columns = {m.body["data"]["new_version"]: [c["name"] for c in
                                               m.body["data"]["entry"]["columns"]]
               for m in schema}
    seqs = {m.body["data"]["new_version"]: m.seq for m in schema}
    rows = [m for m in msgs if m.subject.startswith(f"cdc.{adapter}._.{table}.")]
    return columns, seqs, rows


def _check_rows(columns: dict[int, list[str]], seqs: dict[int, int],
                rows: list[StoredMessage]) -> None:
    for m in rows:
        data = m.body["data"]
        version = data["source"]["schema_version"]
        assert seqs[version] < m.seq, "a row before its version's schema event"
        assert m.body["dataschema"].endswith(f".v{version}")
        if data["after"] is not None:
            assert list(data["after"]) == columns[version]


def test_header_gaining_a_column_is_a_new_version(tmp_path: Path,
                                                  nats_server: NatsServer) -> None:
    extracts, drops, lines = tmp_path / "extracts", tmp_path / "drops", tmp_path / "lines"
    for d in (extracts, drops, lines):
        d.mkdir()
    common = {"type": "files", "pattern": "*.csv", "poll_interval": "100ms",
              "stable_for": "100ms"}
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [
            {**common, "name": "prices", "path": str(extracts), "mode": "snapshot",
             "key": ["sku"], "types": {"price": "decimal"}, "table": "prices",
             "after": {"action": "delete"}},
            {**common, "name": "drops", "path": str(drops), "mode": "drop", "key": ["id"],
             "types": {"id": "int"}, "table": "orders", "after": {"action": "delete"}},
            {**common, "name": "lines", "path": str(lines), "pattern": "*.jsonl",
             "format": "jsonl", "mode": "drop", "table": "lines",
             "after": {"action": "delete"}},
        ],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        (extracts / "day1.csv").write_text("sku,price\nA,1.00\nB,2.00\n")
        (drops / "a.csv").write_text("id,note\n1,x\n2,y\n")
        (lines / "a.jsonl").write_text('{"id": 1}\n{"id": 2, "extra": true}\n')
        wait_for(lambda: not any(p.exists() for p in (extracts / "day1.csv", drops / "a.csv",
                                                     lines / "a.jsonl")), 60,
                 what="the first files read")
        (extracts / "day2.csv").write_text("sku,price,currency\nA,1.00,EUR\nB,2.50,EUR\n"
                                           "C,3.00,USD\n")
        (drops / "b.csv").write_text("id,note,qty\n3,z,7\n")

        def done() -> list[StoredMessage] | None:
            msgs = stream_messages(nats_server.url, schemas=True)
            rows = [m for m in msgs if not m.subject.startswith("cdc._schema.")]
            return msgs if len(rows) >= 2 + 3 + 3 + 2 else None

        msgs = wait_for(done, 60, 0.5, "every row")
        time.sleep(0.3)
        msgs = stream_messages(nats_server.url, schemas=True)
    finally:
        assert bridge.terminate() == 0, bridge.log()

    columns, seqs, rows = _versions(msgs, "prices", "prices")
    assert columns == {1: ["sku", "price"], 2: ["sku", "price", "currency"]}
    _check_rows(columns, seqs, rows)
    ops = [(m.body["data"]["op"], m.body["data"]["key"]["sku"],
            m.body["data"]["source"]["schema_version"]) for m in rows]
    assert ops == [("r", "A", 1), ("r", "B", 1), ("u", "A", 2), ("u", "B", 2), ("c", "C", 2)]
    entry = next(m.body["data"]["entry"] for m in msgs
                 if m.subject == "cdc._schema.prices._.prices"
                 and m.body["data"]["new_version"] == 2)
    assert entry["key"] == ["sku"]
    assert [(c["json_type"], c["nullable"]) for c in entry["columns"]] == [
        ("string", False), ("string", True), ("string", False)]

    columns, seqs, rows = _versions(msgs, "drops", "orders")
    assert columns == {1: ["id", "note"], 2: ["id", "note", "qty"]}
    _check_rows(columns, seqs, rows)
    assert [m.body["data"]["source"]["schema_version"] for m in rows] == [1, 1, 2]
    assert entry["columns"][1]["source_type"] == "csv decimal"

    jsonl = [m for m in msgs if m.subject.startswith("cdc.lines.")]
    assert len(jsonl) == 2 and not any(m.subject.startswith("cdc._schema.lines.")
                                       for m in msgs)
    assert all("dataschema" not in m.body and "schema_version" not in
               m.body["data"]["source"] for m in jsonl)
