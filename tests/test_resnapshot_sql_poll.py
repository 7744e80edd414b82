"""``cdc-bridge snapshot`` on ``type: sql_poll`` (SQLite source, real nats-server, the
bridge as a real process, the CLI as a real subprocess).

* ``incrementing``: while rows keep being inserted, the re-snapshot emits ``r`` for
  every row present when it started, and the change cursor neither skips nor repeats
  an insert because of it (every new id exactly once as ``c``).
* ``diff``: while rows are updated and deleted, the full pass emits ``r`` for every
  current row and refreshes the diff state: folding the stream gives the table, and the
  next update's ``before`` is the row as the ``r`` event showed it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.helpers import BridgeProcess, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdc_bridge.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def datas(url: str, table: str) -> list[dict[str, Any]]:
    return [m.body["data"] for m in stream_messages(url, subject=f"cdc.erp._.{table}.>")]


def fold(events: list[dict[str, Any]]) -> dict[int, str]:
    state: dict[int, str] = {}
    for d in events:
        if d["op"] == "d":
            state.pop(d["before"]["id"], None)
        else:
            state[d["after"]["id"]] = d["after"]["v"]
    return state


INVOICES = 1200


def test_resnapshot_incrementing_and_diff(tmp_path: Path, nats_server: NatsServer) -> None:
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, v TEXT)")
        # enough rows that the re-snapshot's pages outlast several poll intervals
        conn.executemany("INSERT INTO invoices VALUES (?, ?)", [(i, f"i{i}") for i in
                                                                range(1, INVOICES + 1)])
        conn.executemany("INSERT INTO customers VALUES (?, ?)", [(i, f"c{i}") for i in
                                                                 range(1, 201)])
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "ack_timeout": "3s"},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
                      # many small pages against a short poll interval, so regular
                      # polls must interleave with the re-snapshot's pages
                      "poll_interval": "50ms", "batch_size": 10, "tables": [
                          {"name": "invoices", "mode": "incrementing",
                           "incrementing_column": "id"},
                          {"name": "customers", "mode": "diff"}]}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_for(lambda: len(stream_messages(nats_server.url)) >= INVOICES + 200,
                 what="first snapshot")
        bad = cli("snapshot", "-c", str(cfg), "erp", "nope", "--timeout", "30")
        assert bad.returncode == 1 and "'nope' is not polled by adapter erp" in bad.stderr

        inserted: list[int] = []
        stop = threading.Event()

        def writer() -> None:
            with sqlite3.connect(db, timeout=30) as w:
                i = INVOICES
                while not stop.is_set():
                    i += 1
                    w.execute("INSERT INTO invoices VALUES (?, ?)", (i, f"i{i}"))
                    k = i % 200 + 1
                    if i % 7 == 0:
                        w.execute("DELETE FROM customers WHERE id = ?", (k,))
                    else:
                        w.execute("INSERT OR REPLACE INTO customers VALUES (?, ?)",
                                  (k, f"c{k}@{i}"))
                    w.commit()
                    inserted.append(i)
                    time.sleep(0.01)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            time.sleep(0.3)
            # generous: a shared CI machine reads one 10-row page per cycle slowly
            inv = cli("snapshot", "-c", str(cfg), "erp", "invoices", "--timeout", "180")
            newest_when_done = inserted[-1]
            cus = cli("snapshot", "-c", str(cfg), "erp", "customers", "--timeout", "180")
        finally:
            stop.set()
            thread.join()
        assert inv.returncode == 0, (inv.stdout, inv.stderr, bridge.log()[-2000:])
        assert cus.returncode == 0, (cus.stdout, cus.stderr, bridge.log()[-2000:])
        time.sleep(1.0)  # the last polls after the writer stopped

        # incrementing: r for every row present at the start; c for each insert, once
        def all_inserts() -> list[dict[str, Any]] | None:
            got = datas(nats_server.url, "invoices")
            return got if {d["after"]["id"] for d in got if d["op"] == "c"} >= set(
                inserted) else None

        invoices = wait_for(all_inserts, what="every insert")
        resnap = [d for d in invoices if d["source"].get("resnapshot")]
        assert {d["after"]["id"] for d in resnap} >= set(range(1, INVOICES + 1))
        assert all(d["op"] == "r" for d in resnap)
        # the walk ends at the largest key of its start: later inserts are the polls' own
        assert max(d["after"]["id"] for d in resnap) < newest_when_done
        reported = int(inv.stdout.split("done, ")[1].split(" rows")[0])
        assert reported == len(resnap)
        creates = [d["after"]["id"] for d in invoices if d["op"] == "c"]
        assert sorted(creates) == inserted, "the cursor skipped or repeated an insert"
        first = next(i for i, d in enumerate(invoices) if d["source"].get("resnapshot"))
        last = max(i for i, d in enumerate(invoices) if d["source"].get("resnapshot"))
        assert any(d["op"] == "c" for d in invoices[first:last]), "polls paused"

        # diff: r for every current row, state refreshed, the stream folds to the table
        with sqlite3.connect(db) as conn:
            table = dict(conn.execute("SELECT id, v FROM customers").fetchall())
        wait_for(lambda: fold(datas(nats_server.url, "customers")) == table, timeout_s=30,
                 what="customers folded equal to the table")
        customers = datas(nats_server.url, "customers")
        full = [d for d in customers if d["source"].get("resnapshot")]
        assert len(full) == len({d["after"]["id"] for d in full}), "a row read twice"
        k = min(table)
        seen = next(d["after"] for d in reversed(customers) if (d["after"] or {}).get("id") == k)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE customers SET v = 'after' WHERE id = ?", (k,))
        update = wait_for(lambda: next((d for d in datas(nats_server.url, "customers")
                                        if d["op"] == "u" and d["after"]["v"] == "after"),
                                       None), what="the next update")
        assert update["before"] == seen, "diff state not refreshed by the re-snapshot"
        log = bridge.log()
        assert "re-snapshot 1 done" in log and "re-snapshot 2 done" in log
    finally:
        if bridge.alive():
            assert bridge.terminate() == 0, bridge.log()[-2000:]
