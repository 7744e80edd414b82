"""``mode: tail`` on a file that is truncated or replaced, for real: files -> the bridge
as a real process -> a real nats-server.

Before: the bridge read the new content from byte 0 as more ``c`` events, and a consumer
folding the stream kept the old file's rows. Now (``on_table_change: resnapshot``, the
default) a ``t`` comes first, so folding gives exactly the new file, also with
``kill -9`` around the reset (one ``t``, ids unique); with ``on_table_change: stop`` the
daemon stops with the file and the fix, and the fix works.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.helpers import BridgeProcess, StoredMessage, stream_messages, wait_for
from tests.services.nats_server import NatsServer
from tests.test_files_e2e import config


def data(url: str) -> list[dict[str, Any]]:
    return [m.body["data"] for m in stream_messages(url)]


def wait_data(url: str, n: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        got = data(url)
        return got if len(got) >= n else None

    result: list[dict[str, Any]] = wait_for(ready, timeout_s=30, what=f"{n} events")
    return result


def fold(events: list[dict[str, Any]], key: str) -> dict[Any, Any]:
    """What a consumer keeping the latest row per key holds (``t`` clears it)."""
    state: dict[Any, Any] = {}
    for d in events:
        if d["op"] == "t":
            state.clear()
        else:
            state[d["after"][key]] = d["after"]
    return state


def test_truncate_and_replace_send_t_then_the_new_rows(tmp_path: Path,
                                                        nats_server: NatsServer) -> None:
    url = nats_server.url
    live = tmp_path / "stock.csv"
    live.write_bytes(b"sku,qty\nA,1\nB,2\n")
    cfg = config(tmp_path, url, {"name": "stock", "path": str(live), "mode": "tail",
                                 "key": ["sku"], "types": {"qty": "int"}})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_data(url, 2)
        with open(live, "ab") as f:
            f.write(b"C,3\n")
        wait_data(url, 3)
        # truncated and rewritten shorter (same inode), kill -9 right away: the reset is
        # seen live or after the restart, never twice
        with open(live, "r+b") as f:
            f.truncate(0)
            f.write(b"sku,qty\nA,9\n")
        bridge.kill9()
        bridge.start()
        wait_data(url, 5)
        with open(live, "ab") as f:
            f.write(b"D,4\n")
        wait_data(url, 6)
        # a shorter file moved over it (a new inode; the old one has no name left)
        new = tmp_path / "stock.csv.new"
        new.write_bytes(b"sku,qty\nE,5\n")
        os.replace(new, live)
        wait_data(url, 8)
        bridge.kill9()  # after the reset was sent: a restart sends nothing again
        bridge.start()
        with open(live, "ab") as f:
            f.write(b"F,6\n")
        wait_data(url, 9)
        msgs: list[StoredMessage] = stream_messages(url)
    finally:
        if bridge.alive():
            assert bridge.terminate() == 0, bridge.log()
    events = [m.body["data"] for m in msgs]
    assert [(d["op"], d["after"]["sku"] if d["after"] else None) for d in events] == [
        ("c", "A"), ("c", "B"), ("c", "C"), ("t", None), ("c", "A"), ("c", "D"),
        ("t", None), ("c", "E"), ("c", "F")]
    assert len({m.body["id"] for m in msgs}) == len(msgs)
    assert [m.subject for m in msgs if m.body["data"]["op"] == "t"] == ["cdc.stock._.stock.t"] * 2
    assert [d["source"]["reason"] for d in events if d["op"] == "t"] == [
        "file truncated", "file replaced"]
    assert fold(events, "sku") == {"E": {"sku": "E", "qty": 5}, "F": {"sku": "F", "qty": 6}}
    assert "sending t for table stock" in bridge.log()


def test_on_table_change_stop_stops_loudly_then_resnapshot_goes_on(
        tmp_path: Path, nats_server: NatsServer) -> None:
    url = nats_server.url
    live = tmp_path / "app.jsonl"
    live.write_bytes(b'{"id": 1}\n{"id": 2}\n')
    adapter = {"name": "applog", "path": str(live), "format": "jsonl", "mode": "tail",
               "key": ["id"], "on_table_change": "stop"}
    bridge = BridgeProcess(config(tmp_path, url, adapter), tmp_path / "bridge.log")
    bridge.start()
    assert bridge.proc is not None
    try:
        wait_data(url, 2)
        live.write_bytes(b'{"id": 3}\n')  # truncated and rewritten
        code = bridge.proc.wait(30)
    finally:
        if bridge.alive():
            bridge.terminate()
    assert code == 1, bridge.log()
    assert (f"{live} got shorter than the byte offset already read (on_table_change: stop)"
            in bridge.log())
    assert "set on_table_change: resnapshot and restart" in bridge.log()
    assert len(data(url)) == 2  # nothing of the new content
    # the fix the message names
    fixed = BridgeProcess(config(tmp_path, url, {**adapter, "on_table_change": "resnapshot"}),
                          tmp_path / "bridge2.log")
    fixed.start()
    try:
        events = wait_data(url, 4)
    finally:
        assert fixed.terminate() == 0, fixed.log()
    assert [d["op"] for d in events] == ["c", "c", "t", "c"]
    assert fold(events, "id") == {3: {"id": 3}}
