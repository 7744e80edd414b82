"""Captured tables that change under a running bridge (a nightly reload that drops and
re-creates a table; ``ALTER PUBLICATION ... DROP TABLE``), for real.

Before: no event for the drop, none for the new rows, no warning, lost for good. Now the
table watch puts the table back in the publication and the stream sends a ``t`` and a
re-snapshot of its rows, so a consumer folding the stream ends with exactly the table's
contents; with ``on_table_change: stop`` the daemon stops with the reason and the fix.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import BridgeProcess, stream_messages, wait_for
from tests.services.nats_server import NatsServer
from tests.test_pg_adapter import changes, fold, pg_config, pg_dsn, sql  # noqa: F401

WATCH = {"table_check_interval": "300ms"}


def table_rows(dsn: str) -> dict[int, dict[str, object]]:
    return {k: {"k": k, "v": v} for k, v in sql(dsn, "SELECT k, v FROM kv ORDER BY k")}


def folded(url: str) -> dict[object, dict[str, object]]:
    return fold(changes(stream_messages(url, subject="cdc.shop.>")), "kv", key="k")


def test_reload_and_publication_drop_are_repaired_with_t_and_resnapshot(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str) -> None:  # noqa: F811
    sql(pg_dsn, "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        "INSERT INTO kv SELECT g, 'old' || g FROM generate_series(1, 5) g")
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["public.kv"], **WATCH)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_for(lambda: folded(nats_server.url) == table_rows(pg_dsn), what="snapshot")
        # the nightly reload: drop, create, load; then more changes while it is back
        sql(pg_dsn, "DROP TABLE kv", "CREATE TABLE kv (k int PRIMARY KEY, v text)",
            "INSERT INTO kv SELECT g, 'new' || g FROM generate_series(1, 3) g")
        wait_for(lambda: "was dropped and created again" in bridge.log(), what="detection")
        sql(pg_dsn, "INSERT INTO kv VALUES (4, 'new4')", "UPDATE kv SET v = 'n1' WHERE k = 1")
        wait_for(lambda: folded(nats_server.url) == table_rows(pg_dsn),
                 what="the stream to fold to the reloaded table")
        ops = [d["op"] for d in changes(stream_messages(nats_server.url, subject="cdc.shop.>"))]
        assert ops.count("t") == 1 and ops.index("t") >= 5

        # taken out of the publication, then changed: put back, t, re-snapshot
        sql(pg_dsn, "ALTER PUBLICATION cdc_bridge_shop DROP TABLE kv",
            "UPDATE kv SET v = 'gone1' WHERE k = 1", "DELETE FROM kv WHERE k = 2")
        wait_for(lambda: "was taken out of publication" in bridge.log(), what="detection")
        wait_for(lambda: folded(nats_server.url) == table_rows(pg_dsn),
                 what="the stream to fold to the table again")
        assert sql(pg_dsn, "SELECT count(*) FROM pg_publication_tables WHERE "
                   "pubname = 'cdc_bridge_shop' AND tablename = 'kv'") == [(1,)]
    finally:
        assert bridge.terminate() == 0, bridge.log()


def test_on_table_change_stop_stops_loudly(tmp_path: Path, nats_server: NatsServer,
                                            pg_dsn: str) -> None:  # noqa: F811
    sql(pg_dsn, "CREATE TABLE kv (k int PRIMARY KEY, v text)", "INSERT INTO kv VALUES (1, 'a')")
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["public.kv"],
                    on_table_change="stop", **WATCH)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    assert bridge.proc is not None
    try:
        wait_for(lambda: len(stream_messages(nats_server.url)) == 1, what="snapshot")
        sql(pg_dsn, "DROP TABLE kv", "CREATE TABLE kv (k int PRIMARY KEY, v text)")
        code = bridge.proc.wait(60)
    finally:
        if bridge.alive():
            bridge.terminate()
    assert code == 1, bridge.log()
    assert "was dropped and created again" in bridge.log()
    assert "ALTER PUBLICATION cdc_bridge_shop ADD TABLE public.kv" in bridge.log()


def test_changes_while_the_bridge_is_stopped_are_not_hidden_by_its_start(
        tmp_path: Path, nats_server: NatsServer, pg_dsn: str) -> None:  # noqa: F811
    """The table check watches a running bridge; a start re-adds every configured table
    to the publication. Before: a table taken out of the publication (or re-created)
    while the bridge was stopped was silently put back, its changes meanwhile lost. Now
    the start compares with the checkpoint and sends the t and the re-snapshot too."""
    sql(pg_dsn, "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        "INSERT INTO kv SELECT g, 'old' || g FROM generate_series(1, 5) g")
    # a long check interval: only the start can notice
    cfg = pg_config(tmp_path, nats_server.url, pg_dsn, tables=["public.kv"],
                    table_check_interval="1h")
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")

    def run_until_folded(what: str) -> None:
        bridge.start()
        try:
            wait_for(lambda: folded(nats_server.url) == table_rows(pg_dsn), what=what)
        finally:
            assert bridge.terminate() == 0, bridge.log()

    run_until_folded("snapshot")
    sql(pg_dsn, "ALTER PUBLICATION cdc_bridge_shop DROP TABLE kv",
        "UPDATE kv SET v = 'away' || k WHERE k <= 3", "DELETE FROM kv WHERE k = 5")
    run_until_folded("the changes made while it was out of the publication")
    assert "was taken out of publication cdc_bridge_shop while capture was not watching" \
        in bridge.log()
    sql(pg_dsn, "DROP TABLE kv", "CREATE TABLE kv (k int PRIMARY KEY, v text)",
        "INSERT INTO kv VALUES (7, 'reloaded')")
    run_until_folded("the table re-created while the bridge was stopped")
    assert "was dropped and created again while capture was not watching" in bridge.log()
    ops = [d["op"] for d in changes(stream_messages(nats_server.url, subject="cdc.shop.>"))]
    assert ops.count("t") == 2, ops
