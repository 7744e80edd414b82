"""Subject templates end to end: a real SQLite source with a tenant column, the bridge as a
real process, a real nats-server; a files source with an adapter-level template; and
``cdc-bridge validate`` refusing bad templates (docs/subjects.md)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    BridgeProcess,
    StoredMessage,
    stream_count,
    stream_messages,
    wait_for,
    write_config,
)
from tests.services.nats_server import NatsServer

TENANT = "erp.{col:tenant}.{table}.{op}"


def _sql(db: Path, *statements: str) -> None:
    with sqlite3.connect(db) as conn:
        for s in statements:
            conn.execute(s)


def _wait_total(url: str, n: int) -> None:
    wait_for(lambda: stream_count(url) >= n, timeout_s=30, what=f"{n} messages")


def _facts(msgs: list[StoredMessage]) -> list[tuple[str, str, int, str]]:
    return [(m.subject, m.body["data"]["source"]["table"], m.body["data"]["key"]["id"],
             m.body["data"]["op"]) for m in msgs]


def test_tenant_template_sql_poll(tmp_path: Path, nats_server: NatsServer) -> None:
    db = tmp_path / "erp.db"
    _sql(db, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, tenant TEXT, amount TEXT)",
         "CREATE TABLE customers (id INTEGER PRIMARY KEY, tenant TEXT, name TEXT)")
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
                      "poll_interval": "100ms", "subject": TENANT,
                      "tables": [{"name": "invoices", "mode": "diff", "snapshot": "changes"},
                                 {"name": "customers", "mode": "diff",
                                  "snapshot": "changes"}]}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    url = nats_server.url
    steps: list[tuple[int, tuple[str, ...]]] = [
        (4, ("INSERT INTO invoices VALUES (1, 'acme', '10')",
             "INSERT INTO invoices VALUES (2, 'globex', '20')",
             "INSERT INTO invoices VALUES (3, 'acme', '30')",
             "INSERT INTO customers VALUES (1, 'acme', 'Ann')")),
        (5, ("UPDATE invoices SET amount = '11' WHERE id = 1",)),
        # the templated column changes: this update stays on the old tenant's subject
        (6, ("UPDATE invoices SET tenant = 'globex' WHERE id = 3",)),
        (8, ("DELETE FROM invoices WHERE id = 2",
             "UPDATE invoices SET amount = '31' WHERE id = 3")),
    ]
    for total, statements in steps:
        _sql(db, *statements)
        _wait_total(url, total)
    everything = stream_messages(url)
    assert len(everything) == 8, _facts(everything)
    subjects = {(f[2], f[1], f[3]): f[0] for f in _facts(everything)}
    assert subjects == {
        (1, "invoices", "c"): "cdc.erp.acme.invoices.c",
        (2, "invoices", "c"): "cdc.erp.globex.invoices.c",
        (3, "invoices", "c"): "cdc.erp.acme.invoices.c",
        (1, "customers", "c"): "cdc.erp.acme.customers.c",
        (1, "invoices", "u"): "cdc.erp.acme.invoices.u",
        (3, "invoices", "u"): "cdc.erp.globex.invoices.u",  # after the move (last one wins)
        (2, "invoices", "d"): "cdc.erp.globex.invoices.d",  # the before image's tenant
    }
    moved = [m for m in everything if m.body["data"]["key"]["id"] == 3
             and m.body["data"]["source"]["table"] == "invoices"]
    assert [m.subject for m in moved] == ["cdc.erp.acme.invoices.c", "cdc.erp.acme.invoices.u",
                                          "cdc.erp.globex.invoices.u"]
    # a consumer of one tenant gets exactly that tenant's events, in order
    acme = stream_messages(url, subject="cdc.erp.acme.>")
    assert [(t, k, op) for _, t, k, op in _facts(acme)] == [
        ("invoices", 1, "c"), ("invoices", 3, "c"), ("customers", 1, "c"),
        ("invoices", 1, "u"), ("invoices", 3, "u")]
    assert [m for m in acme if m.body["data"]["op"] == "u"][-1].body["data"]["after"][
        "tenant"] == "globex"  # the move is the last event the old tenant sees
    assert len(stream_messages(url, subject="cdc.erp.*.invoices.*")) == 7
    # trace finds a key's events through the template
    proc = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "trace", "-c", str(cfg),
                           "--adapter", "erp", "--table", "invoices", "--key", "id=3",
                           "--all", "--json"], capture_output=True, text=True, timeout=60)
    report = json.loads(proc.stdout)
    assert sorted(e["subject"] for e in report["events"]) == [
        "cdc.erp.acme.invoices.c", "cdc.erp.acme.invoices.u", "cdc.erp.globex.invoices.u"]
    assert bridge.terminate() == 0


def test_files_adapter_template(tmp_path: Path, nats_server: NatsServer) -> None:
    drop = tmp_path / "in"
    drop.mkdir()
    (drop / "a.csv").write_text("id,name\n1,x\n2,y\n")
    (drop / "b.csv").write_text("id,name\n3,z\n")
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "stream": "CDC", "subject_prefix": "cdc"},
        "adapters": [{"name": "exports", "type": "files", "path": str(drop),
                      "pattern": "*.csv", "key": ["id"], "table": "inv_{stem}",
                      "poll_interval": "100ms", "stable_for": "200ms",
                      "subject": "files.{table}.{op}"}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    _wait_total(nats_server.url, 3)
    got = sorted((m.subject, m.body["data"]["after"]["id"])
                 for m in stream_messages(nats_server.url))
    assert [s for s, _ in got] == ["cdc.files.inv_a.c"] * 2 + ["cdc.files.inv_b.c"]
    assert bridge.terminate() == 0


def _adapters(subject: str, extra_tables: list[dict[str, Any]] | None = None) -> str:
    tables = [{"name": "invoices", "mode": "diff"}, {"name": "customers", "mode": "diff"}]
    return json.dumps({"adapters": [{"name": "erp", "type": "sql_poll",
                                     "url": "sqlite:///x.db", "subject": subject,
                                     "tables": tables + (extra_tables or [])}]})


@pytest.mark.parametrize(("content", "needle"), [
    (_adapters("erp.{tabel}.{op}"), "adapters[0].subject: subject template "
     "'erp.{tabel}.{op}': unknown token {tabel}"),
    (_adapters("erp.{col:tenant}.{op}"), "can render the same subject for two tables"),
    (_adapters(TENANT, [{"name": "x", "mode": "diff", "subject": "erp.>"}]),
     "adapters[0].tables[2].subject: subject template 'erp.>': wildcards"),
    (_adapters("erp..{table}.{op}"), "has an empty token"),
])
def test_validate_rejects_templates(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "validate", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert needle in proc.stderr, proc.stderr
