"""A full disk under the SQLite outbox is a clear, retryable error, and nothing is lost.

Uses SQLite's own size limit (``max_page_count``) to make the file "full" for real: the
append fails exactly as on a full disk, then succeeds once room is made.
"""

from __future__ import annotations

import sqlite3
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
