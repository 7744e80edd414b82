"""What ``cdc-bridge outbox`` shows: the store's size, backlog and checkpoints, as data.

Opens the store named by the config (read-mostly: no relay runs here) and returns a
plain dict, so the CLI can print it as text or JSON and tests can check it directly.
A missing SQLite file is reported as such rather than created.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cdc_bridge.outbox.factory import open_store


def store_kind(url: str) -> str:
    return "sqlite" if url.startswith("sqlite:") else "postgresql"


def inspect_outbox(url: str, now_ms: int | None = None) -> dict[str, Any]:
    """Stats of the outbox at ``url``: pending rows, oldest age, size, checkpoints."""
    kind = store_kind(url)
    if kind == "sqlite" and not Path(url[len("sqlite:///"):]).exists():
        return {"kind": kind, "exists": False, "pending": 0}
    store = open_store(url)
    try:
        st = store.stats()
        now = int(time.time() * 1000) if now_ms is None else now_ms
        age = None if st.oldest_pending_ms is None else max(0, now - st.oldest_pending_ms) / 1000
        return {
            "kind": kind, "exists": True, "store_id": store.store_id,
            "pending": st.pending, "oldest_pending_ms": st.oldest_pending_ms,
            "oldest_pending_age_s": age, "size_bytes": st.size_bytes,
            "first_seq": st.first_seq, "last_seq": st.last_seq,
            "checkpoints": store.checkpoints(),
        }
    finally:
        store.close()


def format_report(data: dict[str, Any]) -> str:
    """Human-readable lines for :func:`inspect_outbox`'s result."""
    if not data.get("exists"):
        return f"outbox ({data['kind']}): not created yet (no events captured)"
    age = data["oldest_pending_age_s"]
    size = data["size_bytes"]
    lines = [
        f"outbox ({data['kind']}, store {data['store_id']})",
        f"  pending:      {data['pending']}"
        + (f" (oldest {age:.1f}s ago)" if age is not None else ""),
        f"  size:         {size if size is not None else '?'} bytes",
        f"  seq:          first pending {data['first_seq'] or '-'}, last appended "
        f"{data['last_seq']}",
        "  checkpoints:" + ("" if data["checkpoints"] else " none"),
    ]
    lines += [f"    {name}: {value}" for name, value in sorted(data["checkpoints"].items())]
    return "\n".join(lines)
