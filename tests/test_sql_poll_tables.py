"""sql_poll, one table at a time: odd identifiers, and a table that fails alone.

Against a real MariaDB and a real bridge process: a column named with a backtick or a
space is read (SQLAlchemy's MySQL reflection doubles the backtick; the adapter undoes
it); a configured table that does not exist, and one dropped while the bridge runs, are
set aside (or, dropped while captured, waited for) with their reason in ``status`` and
``cdc_table_failed`` while the other tables keep flowing; their checkpoints stay in the
adapter's checkpoint. A table dropped and created again sends a ``t`` and its rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from tests.helpers import BridgeProcess, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.test_sql_poll_e2e import maria_db  # noqa: F401  (fixture)


def status(cfg: Path) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "status", "-c", str(cfg),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    adapter: dict[str, object] = json.loads(out.stdout)["adapters"][0]
    return adapter


def test_odd_columns_and_a_failing_table_do_not_stop_the_others(
        tmp_path: Path, nats_server: NatsServer, maria_db: str) -> None:  # noqa: F811
    engine = sa.create_engine(maria_db, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.exec_driver_sql("CREATE TABLE good (id int PRIMARY KEY, v text)")
        c.exec_driver_sql("CREATE TABLE odd (`i``d` int PRIMARY KEY, `we``ird` text, "
                          "`sp ace` int)")
        c.exec_driver_sql("CREATE TABLE doomed (id int PRIMARY KEY, v text)")
        c.exec_driver_sql("INSERT INTO good VALUES (1, 'g1')")
        c.exec_driver_sql("INSERT INTO odd VALUES (1, 'tick`ed', 7)")
        c.exec_driver_sql("INSERT INTO doomed VALUES (1, 'd1')")
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_server.url, "ack_timeout": "3s"},
        "http": {"enabled": False},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": maria_db,
                      "poll_interval": "100ms", "tables": [
                          {"name": "good", "incrementing_column": "id"},
                          {"name": "odd", "mode": "diff"},
                          {"name": "missing", "incrementing_column": "id"},
                          {"name": "doomed", "incrementing_column": "id"}]}],
    })
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_for(lambda: len(stream_messages(nats_server.url)) >= 3, what="first rows")
        odd = [m.body["data"] for m in stream_messages(nats_server.url, subject="cdc.erp._.odd.>")]
        assert odd and odd[0]["after"] == {"i`d": 1, "we`ird": "tick`ed", "sp ace": 7}
        assert odd[0]["key"] == {"i`d": 1}
        with engine.connect() as c:
            c.exec_driver_sql("DROP TABLE doomed")
            c.exec_driver_sql("INSERT INTO good VALUES (2, 'g2')")
            c.exec_driver_sql("UPDATE odd SET `sp ace` = 8")
        wait_for(lambda: len(stream_messages(nats_server.url, subject="cdc.erp._.good.>")) == 2
                 and len(stream_messages(nats_server.url, subject="cdc.erp._.odd.>")) == 2,
                 what="the other tables flowing after a table was dropped")
        st = wait_for(lambda: (s := status(cfg)) and len(s["failed_tables"]) == 2 and s,
                      what="both failed tables in status")
        assert st["state"] == "running"
        failed = st["failed_tables"]
        assert isinstance(failed, dict) and set(failed) == {"missing", "doomed"}
        assert "doomed" in str(st["checkpoint"]), "a set-aside table keeps its checkpoint"
        text = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "status", "-c",
                               str(cfg)], capture_output=True, text=True, timeout=60).stdout
        assert "erp: table missing set aside:" in text, text
    finally:
        assert bridge.terminate() == 0, bridge.log()
    assert "table 'missing' set aside, the other tables go on" in bridge.log()
    assert "table 'doomed' was captured before and is gone" in bridge.log()


def test_a_reloaded_table_sends_t_then_its_rows(
        tmp_path: Path, nats_server: NatsServer, maria_db: str) -> None:  # noqa: F811
    """Nightly reload of an ``incrementing`` table: its keys start again at 1, below the
    cursor, so without the check the new rows were never read."""
    engine = sa.create_engine(maria_db, isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        c.exec_driver_sql("CREATE TABLE inv (id int PRIMARY KEY AUTO_INCREMENT, v text)")
        c.exec_driver_sql("INSERT INTO inv (v) VALUES ('a'), ('b'), ('c'), ('d'), ('e')")
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"), "nats": {"url": nats_server.url},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": maria_db,
                      "poll_interval": "100ms",
                      "tables": [{"name": "inv", "incrementing_column": "id"}]}]})

    def folded() -> dict[int, str]:
        state: dict[int, str] = {}
        for m in stream_messages(nats_server.url, subject="cdc.erp.>"):
            d = m.body["data"]
            if d["op"] == "t":
                state.clear()
            elif d["op"] in ("c", "r"):
                state[d["after"]["id"]] = d["after"]["v"]
        return state

    def table() -> dict[int, str]:
        with engine.connect() as c:
            return dict(c.exec_driver_sql("SELECT id, v FROM inv").fetchall())

    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_for(lambda: folded() == table(), what="the first snapshot")
        with engine.connect() as c:  # the reload, all within the same second
            c.exec_driver_sql("DROP TABLE inv")
            c.exec_driver_sql("CREATE TABLE inv (id int PRIMARY KEY AUTO_INCREMENT, v text)")
            c.exec_driver_sql("INSERT INTO inv (v) VALUES ('new1'), ('new2')")
        wait_for(lambda: folded() == table(), what="the reloaded table through t and r")
        with engine.connect() as c:
            c.exec_driver_sql("INSERT INTO inv (v) VALUES ('new3')")
        wait_for(lambda: folded() == table(), what="new rows after the reload")
    finally:
        assert bridge.terminate() == 0, bridge.log()
    ops = [m.body["data"]["op"] for m in stream_messages(nats_server.url, subject="cdc.erp.>")]
    # the new rows are r (the reset's snapshot) or, when a poll came between CREATE and
    # INSERT (the snapshot then found the table empty), c: each once, after the t
    assert ops[:6] == ["r"] * 5 + ["t"] and ops[6:] in (["r", "r", "c"], ["c"] * 3), ops
    assert "the table was dropped and created again" in bridge.log()
