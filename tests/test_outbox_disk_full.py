"""A full disk under the SQLite outbox is a clear, retryable error, and nothing is lost;
published rows are still deleted on a full disk, and capture resumes by itself.

Uses SQLite's own size limit (``max_page_count``) to make the file "full" for real: the
append fails exactly as on a full disk, then succeeds once room is made.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdc_bridge.outbox.base import OutboxMessage, StoreUnavailable
from cdc_bridge.outbox.sqlite import SqliteStore


def test_full_store_raises_retryable_and_keeps_state(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "outbox.db")
    store.append("a", [OutboxMessage("id-0", "cdc.a._.t.c", b"x" * 100)], {"pos": 0})
    conn = store._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = [OutboxMessage(f"id-{i}", "cdc.a._.t.c", b"y" * 4000) for i in range(1, 50)]
    with pytest.raises(StoreUnavailable) as info:
        store.append("a", big, {"pos": 49})
    assert "full" in str(info.value)
    # all or nothing: neither the rows nor the checkpoint moved
    assert store.checkpoint("a") == {"pos": 0}
    assert [r.message.msg_id for r in store.pending(0, 100)] == ["id-0"]
    assert not conn.in_transaction
    conn.execute("PRAGMA max_page_count = 1073741823")
    store.append("a", big, {"pos": 49})
    assert store.checkpoint("a") == {"pos": 49}
    assert len(store.pending(0, 100)) == 50
    store.close()


def test_other_errors_are_not_masked(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "outbox.db")
    store._conn().execute("DROP TABLE checkpoints")
    with pytest.raises(sqlite3.OperationalError):
        store.append("a", [], {"pos": 1})
    store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB file system (tmpfs), so the disk fills for real, WAL included."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (the tests run as root): {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_published_rows_are_deleted_on_a_full_disk_and_capture_resumes(
        small_disk: Path) -> None:
    store = SqliteStore(small_disk / "outbox.db", reserve_bytes=2 * 1024 * 1024)
    assert (small_disk / "outbox.db.reserve").stat().st_size == 2 * 1024 * 1024
    batches = 0
    with pytest.raises(StoreUnavailable, match="full"):
        while True:  # capture until the disk is full: the last batch is refused whole
            store.append("a", [OutboxMessage(f"id-{batches}-{j}", "cdc.a._.t.c",
                                             os.urandom(2000)) for j in range(20)],
                         {"pos": batches})
            batches += 1
    assert batches > 10 and store.checkpoint("a") == {"pos": batches - 1}
    last = store.stats().last_seq
    # the relay deletes what it published, although the disk is full
    assert store.remove(last) == last
    assert store.stats().pending == 0
    assert not (small_disk / "outbox.db.reserve").exists()  # given back to make room
    # capture resumes by itself: the next append fits
    store.append("a", [OutboxMessage("after", "cdc.a._.t.c", b"x")], {"pos": batches})
    assert [r.message.msg_id for r in store.pending(0, 10)] == ["after"]
    store.compact()  # and the reserve is taken again once there is room for it
    assert (small_disk / "outbox.db.reserve").exists()
    store.close()
