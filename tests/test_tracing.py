"""Trace context end to end: a bridge with tracing on exports OTLP/HTTP to a receiver
in this test; every stored event's header equals its body's ``traceparent``; capture,
commit and publish spans arrive for those traces; a client Consumer's handler span
continues them; a re-read after ``kill -9`` gives the identical traceparent."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nats
import pytest

from cdc_bridge.client.consumer import Consumer, ConsumerSettings, Event
from cdc_bridge.kernel.tracecontext import parse_traceparent, span_id_of
from tests.helpers import BridgeProcess, StoredMessage, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent: str
    process: str
    links: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver: POST /v1/traces, protobuf, kept in memory."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = self.path == "/v1/traces"
                if ok:
                    receiver.take(body)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def take(self, body: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        for rs in request.resource_spans:
            res = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    span = Span(s.name, s.trace_id.hex(), s.span_id.hex(),
                                s.parent_span_id.hex(), res.get("cdc.process", ""),
                                [lk.trace_id.hex() for lk in s.links],
                                {a.key: a.value for a in s.attributes})
                    assert res.get("service.name") == "bridge-under-test"
                    with self.lock:
                        self.spans.append(span)

    def named(self, name: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.name == name]


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def _setup(tmp_path: Path, nats_url: str, port: int) -> tuple[Path, Path]:
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount TEXT)")
        conn.executemany("INSERT INTO invoices VALUES (?, ?)",
                         [(i, f"{i}.50") for i in range(1, 4)])
    cfg = write_config(tmp_path / "bridge.yaml", {
        "state_dir": str(tmp_path / "state"),
        "nats": {"url": nats_url},
        "tracing": {"enabled": True, "endpoint": f"http://127.0.0.1:{port}",
                    "service_name": "bridge-under-test", "export_interval": "100ms"},
        "adapters": [{"name": "erp", "type": "sql_poll", "url": f"sqlite:///{db}",
                      "poll_interval": "100ms",
                      "tables": [{"name": "invoices", "incrementing_column": "id"}]}],
    })
    return cfg, db


def _check_traceparents(stored: list[StoredMessage]) -> dict[str, str]:
    out = {}
    for m in stored:
        tp = m.body["traceparent"]
        assert m.headers["traceparent"] == tp
        parsed = parse_traceparent(tp)
        assert parsed is not None and parsed.sampled
        assert parsed.trace_id == uuid.UUID(m.body["id"]).hex
        assert parsed.span_id == span_id_of(m.body["id"])
        out[m.body["id"]] = tp
    return out


def test_spans_from_capture_to_the_consumers_handler(
        tmp_path: Path, nats_server: NatsServer, otlp: OtlpReceiver) -> None:
    cfg, _ = _setup(tmp_path, nats_server.url, otlp.port)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    try:
        wait_for(lambda: len(stream_messages(nats_server.url)) == 3, 60)
        stored = stream_messages(nats_server.url)
        tps = _check_traceparents(stored)
        traces = {uuid.UUID(eid).hex: span_id_of(eid) for eid in tps}

        def arrived() -> bool:
            return all(traces.keys() <= {s.trace_id for s in otlp.named(name)}
                       for name in ("cdc.capture", "cdc.outbox.commit", "cdc.publish"))

        wait_for(arrived, 30)
        for s in otlp.named("cdc.capture"):
            if s.trace_id in traces:
                assert s.span_id == traces[s.trace_id] and s.parent == ""
                assert s.process == "capture"
        for name, process in (("cdc.outbox.commit", "capture"), ("cdc.publish", "relay")):
            for s in otlp.named(name):
                if s.trace_id in traces:
                    assert s.parent == traces[s.trace_id] and s.process == process
        publish = [s for s in otlp.named("cdc.publish") if s.trace_id in traces]
        assert {s.attributes["cdc.stream.sequence"].int_value for s in publish} == \
            {m.seq for m in stored}
        wait_for(lambda: any(traces.keys() & set(s.links)
                             for s in otlp.named("cdc.publish.batch")), 30)
        linked = {t for s in otlp.named("cdc.capture.batch") for t in s.links}
        assert traces.keys() <= linked
    finally:
        assert bridge.terminate() == 0, bridge.log()

    asyncio.run(_consume(nats_server.url, traces))


async def _consume(url: str, traces: dict[str, str]) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    seen: dict[str, tuple[str, str]] = {}
    done = asyncio.Event()

    async def handle(event: Event) -> None:
        ctx = trace.get_current_span().get_span_context()
        seen[event.id] = (f"{ctx.trace_id:032x}", event.traceparent or "")
        if len(seen) == len(traces):
            done.set()

    consumer = Consumer(ConsumerSettings(servers=[url], durable="svc",
                                         filter_subject="cdc.erp.>"), handle)
    task = asyncio.create_task(consumer.run(fetch_timeout_s=0.3))
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 10)
    assert {tid for tid, _ in seen.values()} == set(traces)
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("process cdc.erp")]
    assert {f"{s.context.trace_id:032x}" for s in spans} == set(traces)
    for s in spans:
        assert s.parent is not None and s.parent.is_remote
        assert f"{s.parent.span_id:016x}" == traces[f"{s.context.trace_id:032x}"]
        assert s.kind == trace.SpanKind.CONSUMER


def test_a_reread_after_kill_9_gives_the_same_traceparent(
        tmp_path: Path, nats_server: NatsServer, otlp: OtlpReceiver) -> None:
    cfg, _ = _setup(tmp_path, nats_server.url, otlp.port)
    bridge = BridgeProcess(cfg, tmp_path / "bridge.log")
    bridge.start()
    wait_for(lambda: len(stream_messages(nats_server.url)) == 3, 60)
    first = _check_traceparents(stream_messages(nats_server.url))
    bridge.kill9()

    async def drop_stream() -> None:  # so the re-read is stored again, not deduplicated
        nc = await nats.connect(nats_server.url)
        await nc.jetstream().delete_stream("CDC")
        await nc.close()

    asyncio.run(drop_stream())
    for path in (tmp_path / "state").glob("outbox.db*"):  # the checkpoint: read again
        path.unlink()
    again = BridgeProcess(cfg, tmp_path / "bridge2.log")
    again.start()
    try:
        wait_for(lambda: len(stream_messages(nats_server.url)) == 3, 60)
        second = _check_traceparents(stream_messages(nats_server.url))
    finally:
        assert again.terminate() == 0, again.log()
    assert second == first
