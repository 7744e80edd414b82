"""A short memory of the daemon's counters, for rates and sparklines on the status page.

The daemon samples its monotonic counters once per operations tick (about a second):
events captured per adapter, events the relay published, and the publish-latency
histogram (:data:`cdc_bridge.metrics.PUBLISH_LATENCY`, cumulative bucket counts). From
the last :data:`KEEP` samples, :class:`History` derives

- per adapter, events per second between consecutive samples (the sparkline);
- a recent rate (events per second over the last :data:`RECENT_S` seconds);
- the publish latency of that window: mean and an upper bound of the 95th percentile
  (the first bucket bound holding 95% of the window's observations).

Everything is in-memory and bounded; a daemon restart starts an empty history.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from cdc_bridge import metrics

#: Samples kept (one a tick: about two minutes).
KEEP = 120
#: The window of "recent" rates and latencies, in seconds.
RECENT_S = 10.0


@dataclass(frozen=True, slots=True)
class Latency:
    """The publish-latency histogram's totals: count, sum and cumulative buckets."""

    count: float = 0.0
    total: float = 0.0
    #: (upper bound, cumulative count) per bucket, ``+Inf`` last.
    buckets: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    adapters: dict[str, int]
    published: int
    latency: Latency


def read_latency() -> Latency:
    """The current totals of ``cdc_publish_latency_seconds`` in this process."""
    count = total = 0.0
    by_bound: dict[float, float] = {}  # summed over the adapters' series
    for family in metrics.PUBLISH_LATENCY.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                bound = float(s.labels.get("le", "inf"))
                by_bound[bound] = by_bound.get(bound, 0.0) + s.value
            elif s.name.endswith("_count"):
                count += s.value
            elif s.name.endswith("_sum"):
                total += s.value
    return Latency(count, total, tuple(sorted(by_bound.items())))


@dataclass
class History:
    keep: int = KEEP
    recent_s: float = RECENT_S
    samples: deque[Sample] = field(default_factory=deque)

    def add(self, sample: Sample) -> None:
        if self.samples and sample.t <= self.samples[-1].t:
            return
        self.samples.append(sample)
        while len(self.samples) > self.keep:
            self.samples.popleft()

    def _window(self) -> tuple[Sample, Sample] | None:
        """The oldest sample within ``recent_s`` of the newest, and the newest."""
        if len(self.samples) < 2:
            return None
        last = self.samples[-1]
        first = next(s for s in self.samples if last.t - s.t <= self.recent_s)
        if first is last:
            first = self.samples[-2]
        return first, last

    def series(self, adapter: str) -> list[float]:
        """Events per second of ``adapter`` between consecutive samples, oldest first."""
        out: list[float] = []
        pairs = zip(self.samples, list(self.samples)[1:], strict=False)
        for a, b in pairs:
            before, after = a.adapters.get(adapter), b.adapters.get(adapter)
            if before is None or after is None:
                continue
            out.append(round(max(0, after - before) / (b.t - a.t), 3))
        return out

    def adapter_rate(self, adapter: str) -> float | None:
        span = self._window()
        if span is None:
            return None
        a, b = span
        if adapter not in a.adapters or adapter not in b.adapters:
            return None
        return round(max(0, b.adapters[adapter] - a.adapters[adapter]) / (b.t - a.t), 3)

    def published_rate(self) -> float | None:
        span = self._window()
        if span is None:
            return None
        a, b = span
        return round(max(0, b.published - a.published) / (b.t - a.t), 3)

    def latency(self) -> dict[str, Any]:
        """Mean and p95 bound (seconds) of the publishes in the recent window; ``None``
        where the window saw no publish."""
        span = self._window()
        if span is None:
            return {"mean_s": None, "p95_s": None, "count": 0}
        a, b = span
        n = b.latency.count - a.latency.count
        if n <= 0:
            return {"mean_s": None, "p95_s": None, "count": 0}
        mean = (b.latency.total - a.latency.total) / n
        return {"mean_s": round(mean, 6), "p95_s": _quantile_bound(a.latency, b.latency, n),
                "count": int(n)}


def _quantile_bound(a: Latency, b: Latency, n: float, q: float = 0.95) -> float | None:
    before = dict(a.buckets)
    for bound, cumulative in b.buckets:
        if cumulative - before.get(bound, 0.0) >= q * n:
            return None if math.isinf(bound) else bound
    return None
