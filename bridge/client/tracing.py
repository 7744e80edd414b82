"""The handler's span: a consumer continues each event's trace (OpenTelemetry, optional).

When an event carries a ``traceparent`` (every event the bridge publishes does), the
consumer runs its handler inside a ``CONSUMER`` span whose parent is that context: the
event's capture span, so one trace runs from the source commit through the bridge to
the service's own writes (their instrumentation sees this span as current). Only if
``opentelemetry-api`` is importable and the service has set a tracer provider
(``trace.set_tracer_provider``); otherwise nothing happens and nothing is imported.
OpenTelemetry is imported lazily, at the first event that has a trace context; the tracer
is looked up once per provider, and without one no trace context is parsed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cdc_bridge.kernel.tracecontext import parse_traceparent

#: ``None``: not looked for yet; ``False``: not installed; else the ``trace`` module.
_trace: Any = None


def _api() -> Any:
    global _trace
    if _trace is None:
        try:
            from opentelemetry import trace
        except ImportError:
            _trace = False
        else:
            _trace = trace
    return _trace


#: The provider the tracer below was taken from, and that tracer (``None``: no tracing).
_cached: tuple[Any, Any] = (object(), None)


def _tracer() -> Any:
    """The service's tracer, or ``None`` when OpenTelemetry is absent or not set up
    (looked up again only when the service sets another provider)."""
    global _cached
    trace = _api()
    if not trace:
        return None
    provider = trace.get_tracer_provider()
    if _cached[0] is not provider:
        noop = isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        _cached = (provider, None if noop else provider.get_tracer("cdc_bridge.client"))
    return _cached[1]


@contextlib.contextmanager
def handler_span(traceparent: str | None, subject: str, event_id: str, durable: str,
                 deliveries: int) -> Iterator[None]:
    """Run the body inside the handler's span (a no-op without trace context or tracer)."""
    tracer = _tracer() if traceparent else None
    parsed = parse_traceparent(traceparent) if tracer is not None else None
    if tracer is None or parsed is None:
        yield
        return
    trace = _trace
    parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
        int(parsed.trace_id, 16), int(parsed.span_id, 16), is_remote=True,
        trace_flags=trace.TraceFlags(1 if parsed.sampled else 0))))
    attributes = {"messaging.system": "nats", "messaging.operation.type": "process",
                  "messaging.destination.name": subject, "messaging.message.id": event_id,
                  "messaging.consumer.group.name": durable,
                  "messaging.message.delivery_count": deliveries}
    with tracer.start_as_current_span(f"process {subject}", context=parent,
                                      kind=trace.SpanKind.CONSUMER, attributes=attributes):
        yield
