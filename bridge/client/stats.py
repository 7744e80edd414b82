"""What a :class:`cdc_bridge.client.consumer.Consumer` counts, and how to export it.

:class:`ConsumerStats` is plain counters and gauges, updated on the hot path without a
metrics library. :func:`prometheus_collector` turns them into Prometheus series at
scrape time; it imports ``prometheus_client`` only when called, so a service that does
not ask never loads it::

    from prometheus_client import REGISTRY, start_http_server
    REGISTRY.register(prometheus_collector(consumer))
    start_http_server(9100)

Series (label ``consumer``, the durable name): ``cdc_consumer_handled_total``,
``cdc_consumer_duplicates_total``, ``cdc_consumer_retried_total`` (handler failures,
nak'ed for redelivery), ``cdc_consumer_dead_lettered_total``,
``cdc_consumer_deferred_total`` (a message waited for an earlier one of its key held
elsewhere), ``cdc_consumer_stuck_total`` (handlers that ran past ``stuck_after_s``),
``cdc_consumer_claims_resolved_total`` and ``cdc_consumer_claims_unresolved_total``
(large events fetched by claim check, and references dead-lettered because their
object was gone or wrong), ``cdc_consumer_schema_rejected_total`` and
``cdc_consumer_upcast_total`` (events refused by validation or upcasting, and events
upcast; :mod:`cdc_bridge.client.evolution`),
``cdc_consumer_handler_seconds`` (histogram), and the gauges ``cdc_consumer_held``
(messages held by this instance), ``cdc_consumer_running``, ``cdc_consumer_keys`` (keys
with a queue), ``cdc_consumer_key_queue_max`` (the deepest key queue),
``cdc_consumer_num_pending`` (the stream's messages not yet delivered to the consumer)
and ``cdc_consumer_ready``. There is no per-key label on purpose: keys are unbounded.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Upper bounds of the handler latency histogram, seconds.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                      0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.n += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


@dataclass(slots=True)
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    #: Handler failures (each nak'ed for redelivery, or dead-lettered on the last try).
    failures: int = 0
    dead_lettered: int = 0
    #: Dead letters JetStream already held (same id in its duplicate window): not counted
    #: in ``dead_lettered``.
    dead_letter_duplicates: int = 0
    deferred: int = 0
    stuck: int = 0
    in_progress_sent: int = 0
    fetch_errors: int = 0
    held: int = 0
    running: int = 0
    keys: int = 0
    key_queue_max: int = 0
    num_pending: int = 0
    #: Claim-check references resolved to their event, and those that could not be
    #: (object gone or not matching: dead-lettered).
    claims_resolved: int = 0
    claims_unresolved: int = 0
    #: Events dead-lettered because they do not match their schema version or cannot be
    #: upcast (``validate``/``upcasters``), and events upcast before their handler.
    schema_rejected: int = 0
    upcast: int = 0
    latency: Histogram = field(default_factory=Histogram)

    @property
    def retried(self) -> int:
        return self.failures

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in (
            "handled", "duplicates", "failures", "dead_lettered", "dead_letter_duplicates",
            "deferred", "stuck", "in_progress_sent", "fetch_errors", "held", "running", "keys",
            "key_queue_max", "num_pending", "claims_resolved", "claims_unresolved",
            "schema_rejected", "upcast")}
        out["handler_seconds_sum"] = self.latency.total
        out["handler_seconds_count"] = self.latency.n
        return out


_COUNTERS = (("handled", "Events handled (handler succeeded, committed, acked)"),
             ("duplicates", "Deliveries skipped: the event id was applied before"),
             ("failures", "Handler failures (nak'ed with back-off, or dead-lettered)"),
             ("dead_lettered", "Messages sent to the dead-letter stream"),
             ("deferred", "Waits for an earlier message of the same key held elsewhere"),
             ("stuck", "Handlers that ran longer than stuck_after_s"),
             ("claims_resolved", "Large events fetched from their claim-check bucket"),
             ("claims_unresolved", "Claim-check references dead-lettered: object gone or "
                                   "not matching"),
             ("schema_rejected", "Events dead-lettered: not matching their schema version, "
                                 "or no upcaster chain to the service's version"),
             ("upcast", "Events brought to a newer schema version by upcasters"))
_GAUGES = (("held", "Messages this instance holds (queued or running)"),
           ("running", "Handlers running now"),
           ("keys", "Order keys with messages held"),
           ("key_queue_max", "Messages held for the busiest key"),
           ("num_pending", "Stream messages not yet delivered to the consumer"))


def prometheus_collector(consumer: Any) -> Any:
    """A ``prometheus_client`` collector reading ``consumer.stats`` at scrape time."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    from prometheus_client.registry import Collector

    name = str(consumer.settings.durable)
    ready: Callable[[], bool] = consumer.ready

    class _ConsumerCollector(Collector):
        def collect(self) -> Iterator[Any]:
            stats: ConsumerStats = consumer.stats
            for field_name, doc in _COUNTERS:
                c = CounterMetricFamily(f"cdc_consumer_{field_name}", doc, labels=["consumer"])
                c.add_metric([name], float(getattr(stats, field_name)))
                yield c
            r = CounterMetricFamily("cdc_consumer_retried", "Alias of failures: redeliveries"
                                    " asked for", labels=["consumer"])
            r.add_metric([name], float(stats.failures))
            yield r
            for field_name, doc in _GAUGES:
                g = GaugeMetricFamily(f"cdc_consumer_{field_name}", doc, labels=["consumer"])
                g.add_metric([name], float(getattr(stats, field_name)))
                yield g
            g = GaugeMetricFamily("cdc_consumer_ready", "1 when consuming", labels=["consumer"])
            g.add_metric([name], 1.0 if ready() else 0.0)
            yield g
            h = HistogramMetricFamily("cdc_consumer_handler_seconds",
                                      "Handler time per message (in its transaction)",
                                      labels=["consumer"])
            h.add_metric([name], stats.latency.cumulative(), stats.latency.total)
            yield h

    return _ConsumerCollector()
