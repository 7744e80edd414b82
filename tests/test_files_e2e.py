"""End to end: real files -> the bridge as a real process -> a real nats-server.

Each test writes real files (cp1252, BOM, fixed width, JSON lines, bad rows), runs
``cdc-bridge run`` with a ``type: files`` adapter, and reads the JetStream stream back.
Fault tests kill the bridge with ``kill -9`` mid-file and check every row arrives
exactly once, that renamed and archived files are never read twice, and that a file
still being written is not read until stable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.helpers import (
    BridgeProcess,
    StoredMessage,
    appended_events,
    stream_count,
    stream_messages,
    wait_for,
    write_config,
)
from tests.services.nats_server import NatsServer


def config(tmp: Path, nats_url: str, *adapters: dict[str, Any]) -> Path:
    return write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc", "ack_timeout": "3s"},
        "adapters": [{"type": "files", "poll_interval": "100ms", "stable_for": "300ms",
                      **a} for a in adapters],
    })


def changes(msgs: list[StoredMessage], adapter: str) -> list[StoredMessage]:
    return [m for m in msgs if m.subject.startswith(f"cdc.{adapter}.")]


def with_dead(url: str) -> list[StoredMessage]:
    """The stream's messages, then its dead letters (their own stream, CDC_DLQ)."""
    return stream_messages(url) + stream_messages(url, "CDC_DLQ")


def wait_count(url: str, n: int, pred: Any = None, timeout_s: float = 60) -> list[StoredMessage]:
    def ready() -> list[StoredMessage] | None:
        if pred is None and stream_count(url) + stream_count(url, "CDC_DLQ") < n:
            return None
        msgs = with_dead(url)
        sel = [m for m in msgs if pred is None or pred(m)]
        return msgs if len(sel) >= n else None
    result: list[StoredMessage] = wait_for(ready, timeout_s=timeout_s, what=f"{n} messages")
    return result


def test_drop_csv_cp1252_bom_jsonl_fixed_width(tmp_path: Path, nats_server: NatsServer) -> None:
    csv_dir, jl_dir, fw_dir = (tmp_path / d for d in ("csv", "jl", "fw"))
    for d in (csv_dir, jl_dir, fw_dir):
        d.mkdir()
    (csv_dir / "a.csv").write_bytes(
        "id;name;amount\r\n1;Müller €;12,50\r\n2;\"Ä;B\";3\r\n".replace(",", ".").encode("cp1252"))
    (csv_dir / "b.csv").write_bytes(b"\xef\xbb\xbf" + "id;name;amount\n3;Zoë ✓;1.5\n".encode())
    (jl_dir / "x.jsonl").write_bytes(b'{"sku": "A1", "qty": 2}\n\n{"sku": "B2", "qty": 5}')
    (fw_dir / "f.dat").write_bytes(b"00001Alpha     00001250\n00002Beta      0000075-\n")
    cfg = config(
        tmp_path, nats_server.url,
        {"name": "exports", "path": str(csv_dir), "pattern": "*.csv", "format": "csv",
         "mode": "drop", "key": ["id"], "types": {"id": "int", "amount": "decimal"},
         "csv": {"delimiter": ";", "encoding": "cp1252"},
         "after": {"action": "archive", "archive_dir": "done"}},
        {"name": "stock", "path": str(jl_dir), "pattern": "*.jsonl", "format": "jsonl",
         "table": "stock_{stem}", "after": {"action": "delete"}},
        {"name": "ledger", "path": str(fw_dir), "pattern": "*.dat", "format": "fixed_width",
         "fixed_width": {"fields": [
             {"name": "id", "start": 1, "length": 5, "type": "int"},
             {"name": "name", "start": 6, "length": 10},
             {"name": "amount", "start": 16, "length": 8, "type": "decimal",
              "implied_decimals": 2}]}},
    )
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        msgs = wait_count(nats_server.url, 7)
        wait_for(lambda: not (jl_dir / "x.jsonl").exists() and
                 (csv_dir / "done" / "a.csv").exists() and (csv_dir / "done" / "b.csv").exists(),
                 what="after-actions", timeout_s=20)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    exports = changes(msgs, "exports")
    assert [m.subject for m in exports] == ["cdc.exports._.exports.c"] * 3
    rows = [m.body["data"]["after"] for m in exports]
    assert rows == [{"id": 1, "name": "Müller €", "amount": "12.50"},
                    {"id": 2, "name": "Ä;B", "amount": "3"},
                    {"id": 3, "name": "Zoë ✓", "amount": "1.5"}]
    first = exports[0].body
    assert first["data"]["key"] == {"id": 1}
    assert first["data"]["source"]["file"] == "a.csv" and first["data"]["source"]["line"] == 2
    assert exports[0].headers["Nats-Msg-Id"] == first["id"]
    stock = changes(msgs, "stock")
    assert [m.subject for m in stock] == ["cdc.stock._.stock_x.c"] * 2
    assert [m.body["data"]["after"] for m in stock] == [{"sku": "A1", "qty": 2},
                                                         {"sku": "B2", "qty": 5}]
    assert stock[0].body["data"]["key"] is None
    ledger = [m.body["data"]["after"] for m in changes(msgs, "ledger")]
    assert ledger == [{"id": 1, "name": "Alpha", "amount": "12.50"},
                      {"id": 2, "name": "Beta", "amount": "-0.75"}]
    assert (fw_dir / "f.dat").exists()  # action: leave
    assert "file a.csv done: 2 good rows, 0 bad rows" in bridge.log()


def test_bad_rows_go_to_dead_letter_subject(tmp_path: Path, nats_server: NatsServer) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "bad.csv").write_bytes(
        b"id,qty\n1,10\n2,10,extra\n3,ten\n4,\xff\xfe\n5,50\n")
    cfg = config(tmp_path, nats_server.url,
                 {"name": "exports", "path": str(drop), "pattern": "*.csv",
                  "types": {"id": "int", "qty": "int"}})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        msgs = wait_count(nats_server.url, 5)
        wait_for(lambda: "bad.csv done" in bridge.log(), what="done log", timeout_s=10)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    good = changes(msgs, "exports")
    assert [m.body["data"]["after"] for m in good] == [{"id": 1, "qty": 10}, {"id": 5, "qty": 50}]
    dlq = [m for m in msgs if m.subject == "cdc_dlq.exports"]
    assert [m.headers["Cdc-Line"] for m in dlq] == ["3", "4", "5"]
    assert all(m.headers["Cdc-File"] == "bad.csv" for m in dlq)
    reasons = [m.headers["Cdc-Reason"] for m in dlq]
    assert "wrong field count" in reasons[0]
    assert "field 'qty': not a number" in reasons[1]
    assert "undecodable bytes" in reasons[2]
    assert dlq[2].body == {"_raw": "4,\ufffd\ufffd"}  # the raw bytes themselves
    assert "file bad.csv done: 2 good rows, 3 bad rows" in bridge.log()


def test_partial_file_is_not_read_until_stable(tmp_path: Path, nats_server: NatsServer) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    cfg = config(tmp_path, nats_server.url,
                 {"name": "exports", "path": str(drop), "pattern": "*.csv",
                  "stable_for": "5s"})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        with open(drop / "slow.csv", "wb") as f:
            f.write(b"id,v\n")
            for i in range(12):  # a writer still at work: 0.25 s between writes
                f.write(f"{i},v{i}\n".encode())
                f.flush()
                time.sleep(0.25)
                assert not appended_events(tmp_path / "state" / "outbox.db"), \
                    "read before stable"
            f.write(b"12,v12")  # last line without newline: taken once stable
        msgs = wait_count(nats_server.url, 13)
        time.sleep(0.5)
        msgs = with_dead(nats_server.url)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    assert [m.body["data"]["after"]["id"] for m in msgs] == [str(i) for i in range(13)]


def test_kill9_mid_file_rename_and_archive(tmp_path: Path, nats_server: NatsServer) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    total = 40_000
    with open(drop / "big.csv", "w") as f:
        f.write("id,payload\n")
        for i in range(total):
            f.write(f'{i},"row {i}, with a quoted comma"\n')
    cfg = config(tmp_path, nats_server.url,
                 {"name": "exports", "path": str(drop), "pattern": "*.csv", "batch_size": 500,
                  "after": {"action": "archive", "archive_dir": str(tmp_path / "archive")}})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    outbox = tmp_path / "state" / "outbox.db"
    wait_for(lambda: appended_events(outbox) > 1000, what="first rows", timeout_s=30,
             interval_s=0.005)
    bridge.kill9()
    seen = appended_events(outbox)
    assert seen < total, "killed too late to test a crash mid-file"
    os.rename(drop / "big.csv", drop / "big-renamed.csv")  # identity survives renames
    bridge.start()
    try:
        msgs = wait_count(nats_server.url, total, timeout_s=90)
        wait_for(lambda: (tmp_path / "archive" / "big-renamed.csv").exists(), what="archived")
        bridge.kill9()
        # a completed file coming back (renamed out of the archive) is not read again
        os.rename(tmp_path / "archive" / "big-renamed.csv", drop / "again.csv")
        bridge.start()
        wait_for(lambda: (tmp_path / "archive" / "again.csv").exists(), what="re-archived")
        time.sleep(0.5)
        msgs = with_dead(nats_server.url)
    finally:
        if bridge.alive():
            assert bridge.terminate() == 0, bridge.log()
    ids = [int(m.body["data"]["after"]["id"]) for m in msgs]
    assert len(ids) == total, f"{len(ids) - len(set(ids))} duplicates"
    assert ids == list(range(total))  # exactly once, in file order
    assert "resuming big-renamed.csv at byte" in bridge.log()
    assert msgs[-1].body["data"]["source"]["file"] == "big-renamed.csv"


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def test_tail_follows_rotation_and_truncation(tmp_path: Path, nats_server: NatsServer) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    live = log_dir / "app.log"
    live.write_bytes(b'{"n": 1}\n{"n": 2}\n{"n": 3')  # 3 is not complete yet
    cfg = config(tmp_path, nats_server.url,
                 {"name": "applog", "path": str(live), "format": "jsonl", "mode": "tail"})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_count(nats_server.url, 2)
        time.sleep(0.5)
        assert stream_count(nats_server.url) == 2
        _append(live, b'}\n{"n": 4}\n')
        wait_count(nats_server.url, 4)
        # rotation: rename, the writer still appends to the old file, then a new file
        os.rename(live, log_dir / "app.log.1")
        _append(log_dir / "app.log.1", b'{"n": 5}\n{"n": 6}')
        live.write_bytes(b'{"n": 7}\n')
        wait_count(nats_server.url, 7)
        bridge.kill9()
        _append(live, b'{"n": 8}\nnot json\n')
        bridge.start()
        wait_count(nats_server.url, 9)
        # copy-truncate: the same inode starts again with new content
        with open(live, "r+b") as f:
            f.truncate(0)
        _append(live, b'{"n": 10}\n')
        wait_count(nats_server.url, 10)
        _append(live, b'{"n": 11}\n')
        wait_count(nats_server.url, 11)
        time.sleep(0.5)
        msgs = with_dead(nats_server.url)
    finally:
        if bridge.alive():
            assert bridge.terminate() == 0, bridge.log()
    events = changes(msgs, "applog")
    # the truncation is no silent restart: a t first (see tests/test_files_tail_reset.py)
    assert [m.body["data"]["after"]["n"] if m.body["data"]["op"] == "c" else "t"
            for m in events] == [1, 2, 3, 4, 5, 6, 7, 8, "t", 10, 11]
    assert len({m.body["id"] for m in events}) == len(events)
    dlq = [m for m in msgs if m.subject == "cdc_dlq.applog"]
    assert len(dlq) == 1 and "malformed JSON" in dlq[0].headers["Cdc-Reason"]
    assert "rotated" in bridge.log() and "truncated" in bridge.log()


def test_snapshot_changed_extract_gives_c_u_d(tmp_path: Path, nats_server: NatsServer) -> None:
    drop = tmp_path / "extracts"
    drop.mkdir()
    cfg = config(tmp_path, nats_server.url,
                 {"name": "prices", "path": str(drop), "pattern": "*.csv", "mode": "snapshot",
                  "key": ["sku"], "types": {"price": "decimal"}, "table": "prices",
                  "batch_size": 2, "after": {"action": "delete"}})
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        (drop / "day1.csv").write_text("sku,price\nA,1.00\nB,2.00\nC,3.00\nD,4.00\n")
        wait_count(nats_server.url, 4)
        wait_for(lambda: not (drop / "day1.csv").exists(), what="day1 deleted")
        (drop / "day2.csv").write_text("sku,price\nA,1.00\nB,2.50\nE,5.00\nD,4.00\nE,6\n")
        msgs = wait_count(nats_server.url, 8)
        time.sleep(0.5)
        msgs = with_dead(nats_server.url)
    finally:
        assert bridge.terminate() == 0, bridge.log()
    events = [(m.body["data"]["op"], m.body["data"]["key"]["sku"], m.body["data"]["before"],
               m.body["data"]["after"]) for m in changes(msgs, "prices")]
    assert events[:4] == [("r", s, None, {"sku": s, "price": p}) for s, p in
                          [("A", "1.00"), ("B", "2.00"), ("C", "3.00"), ("D", "4.00")]]
    assert events[4:] == [
        ("u", "B", {"sku": "B", "price": "2.00"}, {"sku": "B", "price": "2.50"}),
        ("d", "C", {"sku": "C", "price": "3.00"}, None),
        ("c", "E", None, {"sku": "E", "price": "5.00"}),
    ]
    assert [m.subject for m in changes(msgs, "prices")][4:] == [
        "cdc.prices._.prices.u", "cdc.prices._.prices.d", "cdc.prices._.prices.c"]
    dlq = [m for m in msgs if m.subject == "cdc_dlq.prices"]
    assert len(dlq) == 1 and "duplicate key" in dlq[0].headers["Cdc-Reason"]
    assert dlq[0].headers["Cdc-Line"] == "6"
