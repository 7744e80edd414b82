"""``cdc-bridge status``: per adapter state, checkpoint, lag and pending events.

Two sources, merged:

- the outbox store (always): each adapter's committed checkpoint, and the events still
  pending in the outbox per adapter (counted from the pending rows' subjects, up to
  ``max_scan`` rows so a huge backlog cannot make the command slow), total pending and
  the age of the oldest pending event;
- the running daemon's live state (when it runs): adapter state, restarts, last error,
  source lag, NATS connection. Read from its HTTP endpoint when ``http.enabled``, else
  from the heartbeat it writes to the control file (:mod:`cdc_bridge.daemon.control`).

:func:`gather` returns plain data (also the ``--json`` output); :func:`render` turns it
into a table for people.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cdc_bridge.cli.group_status import read_group, render_group
from cdc_bridge.config import BridgeConfig
from cdc_bridge.daemon.control import ControlDb, control_path
from cdc_bridge.kernel.events import DLQ_TOKEN
from cdc_bridge.outbox.factory import open_store

#: A heartbeat older than this means the daemon is not running.
STALE_AFTER_S = 10.0


#: A change event's adapter, from its CloudEvents ``source`` near the start of the body
#: (its subject may be templated: docs/subjects.md).
_SOURCE = re.compile(rb'"source":"/cdc-bridge/([^"/]+)"')


def _adapter_of(tokens: list[str], depth: int, payload: bytes) -> str:
    if len(tokens) > depth + 1 and tokens[depth] == DLQ_TOKEN:
        return tokens[depth + 1]
    found = _SOURCE.search(payload, 0, 512)
    if found is not None:
        return found.group(1).decode("utf-8", "replace")
    return tokens[depth] if len(tokens) > depth else "?"


def _pending_by_adapter(store: Any, prefix: str, max_scan: int) -> tuple[dict[str, int], bool]:
    depth = len(prefix.split("."))
    counts: dict[str, int] = {}
    after, scanned = 0, 0
    while scanned < max_scan:
        rows = store.pending(after, min(5000, max_scan - scanned))
        if not rows:
            return counts, False
        for row in rows:
            name = _adapter_of(row.message.subject.split("."), depth, row.message.payload)
            counts[name] = counts.get(name, 0) + 1
        scanned += len(rows)
        after = rows[-1].seq
    return counts, bool(store.pending(after, 1))


def read_outbox(config: BridgeConfig, max_scan: int = 100_000) -> dict[str, Any]:
    url = config.outbox_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return {"exists": False, "pending": 0, "oldest_pending_ms": None, "checkpoints": {},
                "pending_by_adapter": {}, "truncated": False, "schemas": {}}
    store = open_store(url)
    try:
        stats = store.stats()
        counts, truncated = _pending_by_adapter(store, config.nats.subject_prefix, max_scan)
        held = store.held_counts()
        schemas: dict[str, dict[str, Any]] = {}
        for adapter, st in store.schema_states():
            schemas.setdefault(adapter, {})[st.table] = {
                "version": st.version, "paused": st.paused,
                "held": held.get((adapter, st.table), 0)}
        return {"exists": True, "pending": stats.pending,
                "oldest_pending_ms": stats.oldest_pending_ms, "size_bytes": stats.size_bytes,
                "checkpoints": store.checkpoints(), "pending_by_adapter": counts,
                "truncated": truncated, "schemas": schemas}
    finally:
        store.close()


def _http_base(config: BridgeConfig) -> str:
    host = config.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{config.http.port}"


def read_live(config: BridgeConfig, timeout_s: float = 2.0) -> tuple[dict[str, Any] | None, str]:
    """The daemon's live state and where it came from (``http``, ``control``, or why not)."""
    if config.http.enabled:
        try:
            with urllib.request.urlopen(_http_base(config) + "/status", timeout=timeout_s) as r:
                return json.loads(r.read()), "http"
        except (urllib.error.URLError, OSError, ValueError):
            pass  # fall back to the heartbeat in the control file
    path = control_path(config.state_dir)
    if not path.exists():
        return None, "not running"
    snap = ControlDb(path).read_state()
    if snap is None or snap.age_s() > STALE_AFTER_S:
        return None, "not running"
    return {**snap.state, "pid": snap.pid}, "control"


def gather(config: BridgeConfig) -> dict[str, Any]:
    outbox = read_outbox(config)
    live, via = read_live(config)
    group = read_group(config)
    live_adapters: dict[str, Any] = (live or {}).get("adapters", {})
    adapters = []
    for a in config.adapter_configs:
        la = live_adapters.get(a.name, {})
        adapters.append({
            "name": a.name,
            "type": a.type,
            "state": la.get("state", "stopped" if live is None else "unknown"),
            "checkpoint": outbox["checkpoints"].get(a.name),
            "lag": la.get("lag", {}),
            "pending": outbox["pending_by_adapter"].get(a.name, 0),
            "events": la.get("events"),
            "restarts": la.get("restarts"),
            "last_error": la.get("last_error"),
            "failed_tables": la.get("failed_tables") or {},
            "schemas": outbox["schemas"].get(a.name, {}),
        })
    return {
        "daemon": {"running": live is not None, "via": via,
                   "pid": (live or {}).get("pid"), "ready": (live or {}).get("ready"),
                   "nats": (live or {}).get("nats"), "relay": (live or {}).get("relay")},
        "outbox": {k: outbox[k] for k in ("exists", "pending", "oldest_pending_ms",
                                          "truncated")},
        "adapters": adapters,
        "registry": config.nats.schemas_bucket()
        if config.nats.schema_registry.enabled else None,
        **({"group": {**group, "me": (live or {}).get("group", {}).get("member_id")}}
           if group is not None else {}),
    }


def _fmt_lag(lag: dict[str, float]) -> str:
    parts = []
    for unit, value in sorted(lag.items()):
        if unit == "bytes":
            parts.append(f"{value / 1024:.1f}KiB" if value >= 1024 else f"{value:.0f}B")
        elif unit == "seconds":
            parts.append(f"{value:.1f}s")
        else:
            parts.append(f"{value:g} {unit}")
    return " ".join(parts) or "-"


def _short(value: Any, width: int) -> str:
    text = "-" if value is None else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def render(status: dict[str, Any]) -> str:
    d, o = status["daemon"], status["outbox"]
    lines = []
    if d["running"]:
        nats = "connected" if (d.get("nats") or {}).get("connected") else "disconnected"
        lines.append(f"daemon: running (pid {d.get('pid') or '?'}, via {d['via']}), "
                     f"{'ready' if d.get('ready') else 'not ready'}, NATS {nats}")
    else:
        lines.append("daemon: not running")
    age = ""
    if o.get("oldest_pending_ms"):
        age = f", oldest {time.time() - o['oldest_pending_ms'] / 1000:.1f}s old"
    lines.append(f"outbox: {o['pending']} pending{age}")
    header = ("ADAPTER", "TYPE", "STATE", "PENDING", "LAG", "RESTARTS", "CHECKPOINT")
    rows = [header]
    for a in status["adapters"]:
        pending = f"{a['pending']}{'+' if o.get('truncated') else ''}"
        rows.append((a["name"], a["type"], a["state"], pending, _fmt_lag(a["lag"]),
                     "-" if a["restarts"] is None else str(a["restarts"]),
                     _short(a["checkpoint"], 48)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    for a in status["adapters"]:
        if a["last_error"] and a["state"] != "running":
            lines.append(f"{a['name']}: last error: {a['last_error']}")
        for table, reason in sorted(a.get("failed_tables", {}).items()):
            lines.append(f"{a['name']}: table {table} set aside: {reason}")
    lines += _schema_lines(status)
    if "group" in status:
        lines.extend(render_group(status["group"], status["group"].get("me")))
    return "\n".join(lines)


def _schema_lines(status: dict[str, Any]) -> list[str]:
    """The registry in one line; one more per table paused by a schema change."""
    if status.get("registry") is None:
        return []
    tables = [(a["name"], t, s) for a in status["adapters"]
              for t, s in sorted(a.get("schemas", {}).items())]
    lines = [f"schemas: {len(tables)} tables in registry {status['registry']}"
             + (" (" + ", ".join(f"{a}.{t} v{s['version']}" for a, t, s in tables[:6])
                + (", ..." if len(tables) > 6 else "") + ")" if tables else "")]
    for a, t, s in tables:
        if s.get("paused"):
            lines.append(f"{a}: table {t} PAUSED, {s.get('held', 0)} events held: "
                         f"{s['paused']}")
    return lines
