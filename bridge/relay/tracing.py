"""OpenTelemetry spans of the pipeline, exported over OTLP/HTTP (the ``otel`` extra).

Used by both processes of the bridge: the daemon (capture and outbox commit, through
:class:`cdc_bridge.outbox.writer.CommitObserver`) and the relay child (publish through
PubAck), each with its own exporter built from the same ``tracing`` block.
:meth:`Tracing.start` returns ``None`` when tracing is off or the SDK is missing, and
only then is OpenTelemetry imported at all: off, the pipeline pays nothing but the
``traceparent`` itself.

The spans (docs/tracing.md, with the costs measured):

- per *sampled* event (its ``traceparent`` flags, deterministic from the event id),
  in the event's own trace (trace id = event id): ``cdc.capture``, the root, whose span
  id is exactly the traceparent's parent id, from the source's change time (when the
  source gives one and the clocks agree) until the outbox commit; under it
  ``cdc.outbox.commit`` and, from the relay, ``cdc.publish`` (a producer span from the
  publish until its PubAck, with the stream sequence). A downstream consumer's handler
  span continues the same trace under ``cdc.capture``;
- per batch, every event counted: ``cdc.capture.batch`` (with ``cdc.outbox.commit.batch``
  under it) per committed source batch, and ``cdc.publish.batch`` per window of settled
  publishes (until the pipeline empties, a relay batch's worth, or a second), each in
  a trace of its own with span links to the traces of (up to ``max_links``) sampled
  events in it.

Spans are finished records handed straight to a ``BatchSpanProcessor`` (no tracer, no
context switching per event), which exports them from its own thread.
"""

from __future__ import annotations

import importlib.metadata
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from cdc_bridge.kernel.tracecontext import (
    parse_traceparent,
)
from cdc_bridge.relay.rules import message_traceparent
from cdc_bridge.relay.settings import TracingConfig

if TYPE_CHECKING:
    from cdc_bridge.kernel.batch import ChangeBatch
    from cdc_bridge.outbox.base import OutboxMessage
    from cdc_bridge.relay.publisher import Slot

log = logging.getLogger("cdc_bridge.tracing")

#: A source change time further back than this (or in the future) is not believed.
MAX_SOURCE_SKEW_NS = 3600 * 10**9
#: A publish batch span closes after this many settled rows, or this long.
PUBLISH_BATCH_ROWS = 2000
PUBLISH_BATCH_NS = 10**9

_rand64 = random.SystemRandom().getrandbits


class Tracing:
    """One process's exporter and the spans it makes (see the module docstring)."""

    def __init__(self, cfg: TracingConfig, role: str) -> None:
        from opentelemetry import trace as api
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        try:
            version = importlib.metadata.version("cdc-bridge")
        except importlib.metadata.PackageNotFoundError:
            version = "0"
        self.cfg = cfg
        self._api = api
        self._span_cls = ReadableSpan
        self._flags = api.TraceFlags(api.TraceFlags.SAMPLED)
        self._resource = Resource.create({"service.name": cfg.service_name,
                                          "service.version": version,
                                          "cdc.process": role})
        self._scope = InstrumentationScope("cdc_bridge", version)
        self.exporter = OTLPSpanExporter(endpoint=cfg.traces_url(), timeout=cfg.timeout)
        self.processor = BatchSpanProcessor(
            self.exporter, max_queue_size=cfg.max_queue,
            schedule_delay_millis=cfg.export_interval * 1000,
            max_export_batch_size=min(512, cfg.max_queue))
        #: The open publish batch: start (ns), counts by outcome, links.
        self._pub_start = 0
        self._pub_counts: dict[str, int] = {}
        self._pub_links: list[Any] = []
        log.info("tracing on: exporting spans to %s (sample ratio %g)", cfg.traces_url(),
                 cfg.sample_ratio)

    @classmethod
    def start(cls, cfg: TracingConfig | None, role: str) -> Tracing | None:
        """The process's tracing, or ``None`` if off or the SDK is not installed."""
        if cfg is None or not cfg.enabled:
            return None
        try:
            return cls(cfg, role)
        except ImportError as e:
            log.warning("tracing is enabled but OpenTelemetry is not installed (%s): install "
                        "the otel extra, pip install 'cdc-bridge[otel]'; running untraced", e)
            return None

    # -- building blocks --------------------------------------------------------------

    def _context(self, trace_id: int, span_id: int) -> Any:
        return self._api.SpanContext(trace_id, span_id, is_remote=False,
                                     trace_flags=self._flags)

    def _emit(self, name: str, context: Any, parent: Any, start_ns: int, end_ns: int,
              attributes: dict[str, Any], links: list[Any] | tuple[()] = (),
              kind: Any = None) -> None:
        span = self._span_cls(
            name, context=context, parent=parent, resource=self._resource,
            attributes=attributes, links=links,
            kind=kind if kind is not None else self._api.SpanKind.INTERNAL,
            start_time=start_ns, end_time=max(end_ns, start_ns),
            instrumentation_scope=self._scope)
        self.processor.on_end(span)

    def _link(self, trace_id: int, span_id: int) -> Any:
        return self._api.Link(self._context(trace_id, span_id))

    # -- capture side (the daemon) ----------------------------------------------------

    def committed(self, adapter: str, batch: ChangeBatch, messages: list[OutboxMessage],
                  received_ns: int, encoded_ns: int, committed_ns: int) -> None:
        """Spans of one committed batch (:class:`cdc_bridge.outbox.writer.CommitObserver`)."""
        links: list[Any] = []
        events = batch.events
        for i, msg in enumerate(messages):
            value = message_traceparent(msg)
            tp = parse_traceparent(value) if value and value[-1] == "1" else None
            if tp is None or not tp.sampled:
                continue
            tid, sid = int(tp.trace_id, 16), int(tp.span_id, 16)
            start = received_ns
            ts_ms = events[i].ts_ms if i < len(events) else None
            if ts_ms is not None and 0 <= received_ns - ts_ms * 10**6 <= MAX_SOURCE_SKEW_NS:
                start = ts_ms * 10**6
            root = self._context(tid, sid)
            attrs: dict[str, Any] = {"cdc.adapter": adapter, "cdc.event.id": msg.msg_id,
                                     "messaging.message.id": msg.msg_id,
                                     "cdc.subject": msg.subject}
            if i < len(events):
                attrs["cdc.position"] = events[i].position
            self._emit("cdc.capture", root, None, start, committed_ns, attrs)
            self._emit("cdc.outbox.commit", self._context(tid, _rand64(64)), root,
                       encoded_ns, committed_ns, {"cdc.adapter": adapter,
                                                  "cdc.event.id": msg.msg_id})
            if len(links) < self.cfg.max_links:
                links.append(self._link(tid, sid))
        batch_tid, batch_sid = _rand64(128), _rand64(64)
        batch_ctx = self._context(batch_tid, batch_sid)
        counts = {"cdc.adapter": adapter, "cdc.batch.events": len(events),
                  "cdc.batch.messages": len(messages), "cdc.batch.sampled_links": len(links)}
        self._emit("cdc.capture.batch", batch_ctx, None, received_ns, committed_ns, counts,
                   links)
        self._emit("cdc.outbox.commit.batch", self._context(batch_tid, _rand64(64)),
                   batch_ctx, encoded_ns, committed_ns, counts)

    # -- relay side (the relay child) -------------------------------------------------

    def settled(self, slot: Slot, outcome: str) -> None:
        """A publish got its PubAck (``outcome``: published, duplicate, dead_lettered)."""
        now_ns = time.time_ns()
        sent_ns = now_ns - int((time.monotonic() - slot.sent_at) * 1e9) if slot.sent_at \
            else now_ns
        if not self._pub_start:
            self._pub_start = sent_ns
        counts = self._pub_counts
        counts[outcome] = counts.get(outcome, 0) + 1
        tp = slot.traceparent
        if tp and tp[-1] == "1":
            parsed = parse_traceparent(tp)
            if parsed is not None:
                tid, sid = int(parsed.trace_id, 16), int(parsed.span_id, 16)
                msg = slot.message
                self._emit("cdc.publish", self._context(tid, _rand64(64)),
                           self._context(tid, sid), sent_ns, now_ns,
                           {"messaging.system": "nats", "messaging.operation.type": "send",
                            "messaging.destination.name": msg.subject,
                            "messaging.message.id": msg.msg_id,
                            "cdc.stream.sequence": slot.ack_seq, "cdc.outcome": outcome},
                           kind=self._api.SpanKind.PRODUCER)
                if len(self._pub_links) < self.cfg.max_links:
                    self._pub_links.append(self._link(tid, sid))
        if sum(counts.values()) >= PUBLISH_BATCH_ROWS \
                or now_ns - self._pub_start >= PUBLISH_BATCH_NS:
            self.flush_publish(now_ns)

    def flush_publish(self, now_ns: int | None = None) -> None:
        """Close the open publish batch span (if it counted anything)."""
        if not self._pub_counts:
            return
        end = now_ns or time.time_ns()
        attrs: dict[str, Any] = {f"cdc.batch.{k}": v for k, v in self._pub_counts.items()}
        attrs["cdc.batch.messages"] = sum(self._pub_counts.values())
        attrs["cdc.batch.sampled_links"] = len(self._pub_links)
        self._emit("cdc.publish.batch", self._context(_rand64(128), _rand64(64)), None,
                   self._pub_start, end, attrs, self._pub_links)
        self._pub_start, self._pub_counts, self._pub_links = 0, {}, []

    def shutdown(self) -> None:
        """Export what is queued and stop (blocking: the exporter posts over HTTP)."""
        self.flush_publish()
        try:
            self.processor.shutdown()  # type: ignore[no-untyped-call]
        except Exception as e:  # tracing must never take the bridge down
            log.warning("tracing: exporting the last spans failed: %s", e)
