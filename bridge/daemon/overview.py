"""``GET /api/overview``: everything the status page shows, in one JSON answer.

It is the daemon's live state (``/status``: adapters, relay, outbox, NATS) plus what
only a page needs:

- ``adapters.<name>.throughput``: events per second between the daemon's last samples
  (the sparkline) and ``rate_per_s`` over the last ten seconds (:mod:`.history`);
- ``relay.rate_per_s`` and ``relay.latency`` (mean and p95 bound of the append-to-PubAck
  time of the recent publishes);
- ``outbox.oldest_age_s``, the age of the oldest unpublished event;
- ``jetstream``: the stream, each durable consumer (pending, ack pending, ack floor) and
  the latest dead letters (:mod:`.jetstream_view`);
- ``snapshots``: the latest re-snapshot requests with their progress, the adapter's
  estimated total where it reports one, a rate and an ETA.

Every string in the answer passes through the daemon's redaction (the configured
secrets and URL passwords), on top of what ``/status`` already masks.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from cdc_bridge.adapters.contract import ReportsSnapshotProgress
from cdc_bridge.daemon.control import FINISHED, ControlDb, Request
from cdc_bridge.daemon.history import History, Sample, read_latency
from cdc_bridge.daemon.jetstream_view import JetStreamView
from cdc_bridge.daemon.snapshots import AdapterStats

#: Re-snapshot requests shown, newest first.
SNAPSHOTS_SHOWN = 5
#: Seconds of progress samples an ETA is computed from.
ETA_WINDOW_S = 30.0


class DaemonView(Protocol):
    """What the overview reads from the daemon."""

    adapters: dict[str, AdapterStats]

    def live_state(self) -> dict[str, Any]: ...


class Overview:
    def __init__(self, daemon: DaemonView, control: ControlDb, jetstream: JetStreamView,
                 redact: Callable[[str], str]) -> None:
        self.daemon = daemon
        self.control = control
        self.jetstream = jetstream
        self.redact = redact
        self.history = History()
        self._progress: dict[int, deque[tuple[float, int]]] = {}

    def sample(self, state: dict[str, Any]) -> None:
        """Record the counters of one live state (the daemon calls this every tick)."""
        adapters = {name: int(a.get("events", 0)) for name, a in state["adapters"].items()}
        self.history.add(Sample(time.monotonic(), adapters,
                                int(state["relay"].get("published", 0)), read_latency()))

    async def build(self) -> dict[str, Any]:
        state = self.daemon.live_state()
        h = self.history
        for name, adapter in state["adapters"].items():
            adapter["throughput"] = h.series(name)
            adapter["rate_per_s"] = h.adapter_rate(name)
        state["relay"]["rate_per_s"] = h.published_rate()
        state["relay"]["latency"] = h.latency()
        oldest = state["outbox"].get("oldest_pending_ms")
        state["outbox"]["oldest_age_s"] = (None if oldest is None else
                                           max(0.0, time.time() - oldest / 1000))
        state["jetstream"] = await self.jetstream.read()
        requests = await asyncio.to_thread(self.control.recent, "snapshot", SNAPSHOTS_SHOWN)
        state["snapshots"] = [self._snapshot(r) for r in requests]
        for rid in self._progress.keys() - {r.id for r in requests}:
            del self._progress[rid]
        state["now_ms"] = int(time.time() * 1000)
        clean: dict[str, Any] = _redacted(state, self.redact)
        return clean

    def _snapshot(self, req: Request) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": req.id, "adapter": req.adapter, "tables": req.tables, "status": req.status,
            "rows": req.events, "message": req.message, "created_ms": req.created_ms,
            "updated_ms": req.updated_ms, "total": None, "rate_per_s": None, "eta_s": None}
        if req.status in FINISHED:
            self._progress.pop(req.id, None)
            return row
        stats = self.daemon.adapters.get(req.adapter)
        adapter = stats.adapter if stats is not None else None
        if isinstance(adapter, ReportsSnapshotProgress):
            report = adapter.snapshot_progress()
            if report is not None and not report.done and report.total:
                row["total"] = max(report.total, req.events)
        now = time.monotonic()
        seen = self._progress.setdefault(req.id, deque())
        if not seen or seen[-1][1] != req.events or now - seen[-1][0] > 1.0:
            seen.append((now, req.events))
        while len(seen) > 2 and now - seen[0][0] > ETA_WINDOW_S:
            seen.popleft()
        (t0, n0), (t1, n1) = seen[0], seen[-1]
        if t1 > t0 and n1 > n0:
            rate = (n1 - n0) / (t1 - t0)
            row["rate_per_s"] = round(rate, 3)
            if row["total"] is not None:
                row["eta_s"] = round(max(0, row["total"] - req.events) / rate, 1)
        return row


def _redacted(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v, redact) for v in value]
    return value
