"""The example read model (examples/read_model) after a quickstart-like run, all real:
the legacy app writes SQLite, the bridge runs as a process, the service projects."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import BridgeProcess, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.test_pg_adapter import wait_stable

REPO = Path(__file__).resolve().parent.parent
COLUMNS = "id, customer, amount, status, updated_at"
SUBJECT = "cdc.legacy._.invoices.>"


def quickstart_config(tmp: Path, nats_url: str) -> Path:
    """examples/quickstart.yaml with this test's NATS and directories."""
    cfg = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    cfg["state_dir"] = str(tmp / "state")
    cfg["nats"] = {**cfg["nats"], "url": nats_url}
    cfg["nats"].pop("embedded", None)
    cfg["adapters"][0]["url"] = f"sqlite:///{tmp / 'legacy.db'}"
    cfg["adapters"][0]["poll_interval"] = "200ms"
    return write_config(tmp / "quickstart.yaml", cfg)


def legacy_app(tmp: Path, *args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "examples" / "legacy_app.py"),
                    "--db", str(tmp / "legacy.db"), *args], check=True, timeout=120)


def wait_settled(url: str, at_least: int, quiet_s: float = 2.0) -> int:
    """The number of invoice events once there are ``at_least`` and none came for
    ``quiet_s`` (the polls of a loaded machine may bring a last one late)."""
    seen = {"n": -1, "since": 0.0}

    def settled() -> int | None:
        n = len(stream_messages(url, subject=SUBJECT))
        if n != seen["n"]:
            seen["n"], seen["since"] = n, time.monotonic()
            return None
        return n if n >= at_least and time.monotonic() - seen["since"] >= quiet_s else None

    return int(wait_for(settled, what=f"at least {at_least} invoice events, then quiet"))


def read_model(cfg: Path, db: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "examples.read_model", *args, "-c", str(cfg),
                          "--db", str(db)], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr
    return out.stdout


def source_rows(tmp: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(tmp / "legacy.db") as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM invoices ORDER BY id").fetchall()


def model_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT {COLUMNS} FROM invoices WHERE _deleted = 0"
                            " ORDER BY id").fetchall()


def test_read_model_equals_source_and_rebuilds_with_replay(
        tmp_path: Path, nats_server: NatsServer) -> None:
    cfg = quickstart_config(tmp_path, nats_server.url)
    legacy_app(tmp_path, "--create-only")
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    model_db = tmp_path / "read_model.db"
    try:
        legacy_app(tmp_path, "--interval", "0.005", "--count", "120")
        expected = source_rows(tmp_path)
        assert len(expected) == 125  # 5 seed rows + 120 writes
        # every write captured and published: the stream stops growing (the sql_poll
        # diff of customers adds events of its own after the 125 invoices)
        wait_stable(nats_server.url, 125)
        events = len(stream_messages(nats_server.url, subject=SUBJECT))
        out = read_model(cfg, model_db, "run", "--until-idle")
        assert f"stopped: {events} applied" in out
        assert model_rows(model_db) == expected

        # damage the model, then rebuild it from scratch through replay
        with sqlite3.connect(model_db) as conn:
            conn.execute("DELETE FROM invoices WHERE id % 3 = 0")
            conn.execute("UPDATE invoices SET amount = 'wrong' WHERE id = 1")
        assert model_rows(model_db) != expected
        out = read_model(cfg, model_db, "rebuild")
        assert f"rebuilt: {events} events applied, 125 invoices" in out
        assert model_rows(model_db) == expected

        # live again: new rows arrive; what the rebuild applied is not applied twice
        legacy_app(tmp_path, "--interval", "0.005", "--count", "10")
        # 10 writes, 10 or more events (a row updated between two polls is read twice):
        # count them once the invoices' subjects stop growing
        more = wait_settled(nats_server.url, events + 10) - events
        out = read_model(cfg, model_db, "run", "--until-idle")
        assert f"stopped: {more} applied" in out
        assert model_rows(model_db) == source_rows(tmp_path)
        with sqlite3.connect(model_db) as conn:
            totals = dict(conn.execute("SELECT customer, invoices FROM customer_totals"))
        assert sum(totals.values()) == 135
    finally:
        assert bridge.terminate() == 0, bridge.log()
