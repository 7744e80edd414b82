"""Schema evolution of a PostgreSQL table, end to end: real PostgreSQL, the bridge as a
process, real JetStream and its schema registry bucket.

A writer thread updates rows all along while the table gains a column, loses one and
has a column retyped (and is re-snapshotted after the first change): the stream must
hold versions 1..4 in order, each schema-change event before the first row naming its
version, every row image with exactly the columns of its version (the re-snapshot's too),
the verdicts of each change, and the bucket every version plus ``latest``. Then the
same under ``kill -9`` of the bridge landing right after a new version is committed: no
version skipped or numbered twice, no schema event twice, the schema event still first.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

from tests.helpers import BridgeProcess, StoredMessage, _read_outbox, stream_messages, wait_for
from tests.services.nats_server import NatsServer
from tests.test_pg_adapter import (  # noqa: F401  (fixtures)
    bridge_runner,
    pg_config,
    pg_dsn,
    sql,
    start_bridge,
)

TABLE = "shop.public.items"
SCHEMA_SUBJECT = "cdc._schema.shop.public.items"
ROW_PREFIX = "cdc.shop.public.items."
BUCKET = "CDC_SCHEMAS"
KEYS = 20


class Writer:
    """Updates the rows round and round (one transaction each) until stopped; rides out
    the locks of ALTER TABLE."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.stop = threading.Event()
        self.done = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            i = 0
            while not self.stop.is_set():
                conn.execute("UPDATE items SET tick = tick + 1 WHERE id = %s", (i % KEYS,))
                self.done += 1
                i += 1
                time.sleep(0.003)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def make_table(dsn: str) -> None:
    sql(dsn, "CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, note text, "
             "tick int NOT NULL DEFAULT 0)",
        f"INSERT INTO items SELECT g, g, 'n', 0 FROM generate_series(0, {KEYS - 1}) g")


def committed_version(state: Path) -> int:
    """The table's latest version as committed in the outbox (0: none yet)."""
    row = _read_outbox(state / "outbox.db", "SELECT version FROM schemas WHERE adapter=? "
                       "AND tbl=?", "shop", "public.items")
    return 0 if row is None else int(row[0])


def read_kv(url: str) -> dict[str, dict[str, Any]]:
    async def read() -> dict[str, dict[str, Any]]:
        nc = await nats.connect(url)
        try:
            kv = await nc.jetstream().key_value(BUCKET)
            return {k: json.loads((await kv.get(k)).value or b"{}") for k in await kv.keys()}
        finally:
            await nc.close()

    return asyncio.run(read())


def check_stream(msgs: list[StoredMessage], kv: dict[str, dict[str, Any]]) -> dict[int, str]:
    """The properties every run must have; returns each version's verdict."""
    schema = [m for m in msgs if m.subject == SCHEMA_SUBJECT]
    rows = [m for m in msgs if m.subject.startswith(ROW_PREFIX)]
    ids = [m.body["id"] for m in schema]
    assert len(ids) == len(set(ids)), "a schema-change event is in the stream twice"
    row_ids = [m.body["id"] for m in rows]
    assert len(row_ids) == len(set(row_ids)), "a row event is in the stream twice"
    versions = [m.body["data"]["new_version"] for m in schema]
    assert versions == list(range(1, len(versions) + 1)), versions
    fingerprints: dict[int, str] = {}
    for m in schema:
        data = m.body["data"]
        v = data["new_version"]
        assert data["old_version"] == (v - 1 if v > 1 else None)
        assert data["registry"] == {"bucket": BUCKET, "key": f"{TABLE}.v{v}"}
        fingerprints[v] = data["entry"]["fingerprint"]
        # the bucket holds the same document (same fingerprint: a number never reused)
        assert kv[f"{TABLE}.v{v}"]["fingerprint"] == fingerprints[v]
    assert len(set(fingerprints.values())) == len(fingerprints), "two versions, one look"
    latest = kv[f"{TABLE}.latest"]
    assert latest["version"] == max(versions) and latest["fingerprint"] == fingerprints[
        max(versions)]
    columns = {v: [c["name"] for c in kv[f"{TABLE}.v{v}"]["columns"]] for v in versions}
    schema_seq = {m.body["data"]["new_version"]: m.seq for m in schema}
    last = 0
    for m in rows:
        data = m.body["data"]
        v = data["source"]["schema_version"]
        assert m.body["dataschema"] == f"nats-kv://{BUCKET}/{TABLE}.v{v}"
        assert schema_seq[v] < m.seq, f"row of v{v} before its schema event"
        assert v >= last, f"v{v} after v{last}"
        last = v
        image = data["after"] if data["after"] is not None else data["before"]
        assert list(image) == columns[v], (v, image)
    seen = {m.body["data"]["source"]["schema_version"] for m in rows}
    assert seen == set(versions), f"versions with rows: {seen}, versions: {versions}"
    return {m.body["data"]["new_version"]: m.body["data"]["verdict"] for m in schema}


@pytest.fixture
def cfg(tmp_path: Path, nats_server: NatsServer, pg_dsn: str) -> Iterator[Path]:  # noqa: F811
    make_table(pg_dsn)
    yield pg_config(tmp_path, nats_server.url, pg_dsn, tables=["items"], batch_size=200,
                    max_batch_delay="20ms")


def drained(url: str, dsn: str) -> list[StoredMessage]:
    """Once the writer stopped: a last marked change, then everything up to it."""
    sql(dsn, "UPDATE items SET tick = -1 WHERE id = 0")

    def marked() -> list[StoredMessage] | None:
        msgs = stream_messages(url, schemas=True)
        return msgs if any(m.subject.startswith(ROW_PREFIX) and (m.body["data"]["after"] or {})
                           .get("tick") == -1 for m in msgs) else None

    found: list[StoredMessage] = wait_for(marked, timeout_s=90, interval_s=0.5,
                                          what="the last change in the stream")
    return found


def evolve(dsn: str, state: Path, on_commit: Any = None, at: tuple[int, ...] = ()) -> None:
    """Add a column, drop one, retype one; each once the previous version has rows;
    ``on_commit`` called as soon as a version in ``at`` is committed."""
    changes = ["ALTER TABLE items ADD COLUMN extra text",
               "ALTER TABLE items DROP COLUMN note",
               "ALTER TABLE items ALTER COLUMN qty TYPE text"]
    for n, ddl in enumerate(changes, start=1):
        wait_for(lambda n=n: committed_version(state) >= n, timeout_s=60, interval_s=0.01,
                 what=f"version {n} committed")
        time.sleep(0.4)  # rows of version n
        sql(dsn, ddl)
        if on_commit is not None and n + 1 in at:
            wait_for(lambda n=n: committed_version(state) >= n + 1, timeout_s=60,
                     interval_s=0.002, what=f"version {n + 1} committed")
            on_commit()
    wait_for(lambda: committed_version(state) >= 4, timeout_s=60, what="version 4 committed")
    time.sleep(0.4)


def test_add_drop_retype_under_writes(tmp_path: Path, nats_server: NatsServer, pg_dsn: str,  # noqa: F811
                                      cfg: Path,
                                      bridge_runner: list[BridgeProcess]) -> None:  # noqa: F811
    bridge = start_bridge(bridge_runner, cfg, tmp_path / "bridge.log")
    state = tmp_path / "state"
    resnap: list[subprocess.CompletedProcess[str]] = []

    def resnapshot() -> None:  # at v2: the re-snapshot reads the added column too
        resnap.append(subprocess.run(
            [sys.executable, "-m", "cdc_bridge.cli", "snapshot", "-c", str(cfg), "shop",
             "items", "--timeout", "60"], capture_output=True, text=True, timeout=90))

    with Writer(pg_dsn) as writer:
        evolve(pg_dsn, state, on_commit=resnapshot, at=(2,))
    assert writer.done > 100
    assert resnap[0].returncode == 0, (resnap[0].stdout, resnap[0].stderr)
    msgs = drained(nats_server.url, pg_dsn)
    kv = read_kv(nats_server.url)
    verdicts = check_stream(msgs, kv)
    assert verdicts == {1: "full", 2: "full", 3: "full", 4: "breaking"}
    reads = [m.body["data"] for m in msgs if m.subject == ROW_PREFIX + "r"]
    snapshot = [d for d in reads if "resnapshot" not in d["source"]]
    assert len(snapshot) == KEYS
    assert {d["source"]["schema_version"] for d in snapshot} == {1}
    again = [d for d in reads if "resnapshot" in d["source"]]
    assert len(again) == KEYS  # in the look of v2, not the look of the start
    assert {d["source"]["schema_version"] for d in again} == {2}
    cols = {v: {c["name"]: c for c in kv[f"{TABLE}.v{v}"]["columns"]} for v in range(1, 5)}
    assert list(cols[1]) == ["id", "qty", "note", "tick"]
    assert cols[1]["qty"] == {"name": "qty", "source_type": "int4", "json_type": "integer",
                              "nullable": False}
    assert cols[1]["note"]["nullable"] is True and cols[1]["id"]["nullable"] is False
    assert list(cols[2]) == ["id", "qty", "note", "tick", "extra"]
    assert cols[2]["extra"] == {"name": "extra", "source_type": "text",
                                "json_type": "string", "nullable": True}
    assert list(cols[3]) == ["id", "qty", "tick", "extra"]
    assert cols[4]["qty"] == {"name": "qty", "source_type": "text", "json_type": "string",
                              "nullable": False}
    assert all(kv[f"{TABLE}.v{v}"]["key"] == ["id"] for v in range(1, 5))
    assert kv[f"{TABLE}.v4"]["json_schema"]["properties"]["qty"]["type"] == "string"
    # row values agree with their version's JSON types
    for m in msgs:
        if m.subject.startswith(ROW_PREFIX) and m.body["data"]["after"] is not None:
            v = m.body["data"]["source"]["schema_version"]
            qty = m.body["data"]["after"]["qty"]
            assert isinstance(qty, str if v == 4 else int), (v, qty)
    assert bridge.terminate() == 0, bridge.log()


def test_kill9_right_after_a_new_version_is_committed(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str, cfg: Path,  # noqa: F811
        bridge_runner: list[BridgeProcess]) -> None:  # noqa: F811
    logs = iter(range(100))
    bridge = start_bridge(bridge_runner, cfg, tmp_path / f"bridge{next(logs)}.log")
    state = tmp_path / "state"

    def kill_and_restart() -> None:
        nonlocal bridge
        bridge.kill9()  # the version and its first rows are committed, maybe not published
        bridge = start_bridge(bridge_runner, cfg, tmp_path / f"bridge{next(logs)}.log")

    with Writer(pg_dsn):
        # v2: the next change (a DROP) is made while the bridge is down, so the restart
        # reads rows of v2 again with the catalogue already at v3; v4: the breaking one
        evolve(pg_dsn, state, on_commit=kill_and_restart, at=(2, 4))
        time.sleep(0.3)
        kill_and_restart()  # once more, in the middle of the burst of version 4
    msgs = drained(nats_server.url, pg_dsn)
    verdicts = check_stream(msgs, read_kv(nats_server.url))
    assert verdicts == {1: "full", 2: "full", 3: "full", 4: "breaking"}
    assert bridge.terminate() == 0, bridge.log()
