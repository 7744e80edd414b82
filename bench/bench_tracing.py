"""The tracing comparison of ``bench/bench_relay.py --tracing`` (docs/tracing.md).

Variants of the relay run, each against the round's same ceiling:

- ``before``: bodies without ``traceparent`` and :class:`LegacyPublisher`, which sends
  no such header: the relay as it was before trace context;
- ``after`` (the script's usual ``outbox+relay``): every body with its traceparent,
  copied into the header at publish, tracing off;
- ``traced``: tracing on at sample ratio 1 (per-event publish spans for every event,
  batch spans), exported over OTLP/HTTP to :mod:`bench.otlp_sink` in its own process;
- ``sampled``: the same at ``--sample-ratio`` (per-event spans for that share only).

And the capture side's cost per event: encoding with and without the traceparent, and
:meth:`cdc_bridge.relay.tracing.Tracing.committed` (capture and commit spans).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import emit
from cdc_bridge.kernel.batch import ChangeBatch
from cdc_bridge.kernel.events import ChangeEvent, dumps
from cdc_bridge.kernel.tracecontext import traceparent, traceparent_in_body
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.outbox.writer import encode_batch
from cdc_bridge.relay.publisher import Publisher, Slot
from cdc_bridge.relay.settings import TracingConfig
from cdc_bridge.relay.tracing import Tracing
from tests.services.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
RelayRun = Callable[..., Awaitable[float]]


@contextmanager
def sink(enabled: bool) -> Iterator[str]:
    """The OTLP sink process's URL while it runs ("" when not ``enabled``)."""
    if not enabled:
        yield ""
        return
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        print(out.strip())


class LegacyPublisher(Publisher):
    """The publisher before trace context: ``Nats-Msg-Id`` (and stored headers) only."""

    async def send(self, slot: Slot, expected_last: int = -1) -> None:
        msg = slot.message
        if msg.headers is None:
            return await self._send_plain(slot, expected_last)
        return await super().send(slot, expected_last)

    async def _send_plain(self, slot: Slot, expected_last: int) -> None:
        from cdc_bridge.kernel.errors import PublishUnavailable
        from cdc_bridge.relay.publisher import EXPECTED_LAST_SEQ

        nc = self.nc
        if nc is None or not nc.is_connected:
            raise PublishUnavailable("not connected to NATS")
        msg = slot.message
        headers = {"Nats-Msg-Id": msg.msg_id}
        if expected_last >= 0:
            headers[EXPECTED_LAST_SEQ] = str(expected_last)
        slot.expected_last = expected_last
        self._counter += 1
        token = str(self._counter)
        self._slots[token] = slot
        slot.sent_at = time.monotonic()
        await nc.publish(msg.subject, msg.payload, reply=self._reply + token, headers=headers)


def without_traceparent(msgs: list[OutboxMessage]) -> list[OutboxMessage]:
    """The same messages with bodies as they were before trace context."""
    out = []
    for m in msgs:
        tp = traceparent_in_body(m.payload)
        body = m.payload.replace(f'"traceparent":"{tp}",'.encode(), b"", 1) if tp \
            else m.payload
        out.append(m._replace(payload=body))
    return out


def at_ratio(msgs: list[OutboxMessage], ratio: float) -> list[OutboxMessage]:
    """The same messages as captured with ``tracing.sample_ratio: ratio`` (their flags)."""
    out = []
    for m in msgs:
        old = traceparent_in_body(m.payload) or ""
        out.append(m._replace(payload=m.payload.replace(
            old.encode(), traceparent(m.msg_id, ratio).encode(), 1)))
    return out


def start_tracing(url: str, ratio: float) -> Tracing:
    tracing = Tracing.start(TracingConfig(enabled=True, endpoint=url, sample_ratio=ratio),
                            "bench")
    assert tracing is not None, "the otel extra is not installed"
    return tracing


async def relay_variants(results: dict[str, list[float]], r: int, msgs: list[OutboxMessage],
                         url: str, ratio: float, run: RelayRun) -> None:
    """One round's ``before``, ``traced`` and ``sampled`` runs (appended to ``results``)."""
    results.setdefault("before", []).append(
        await run("before", without_traceparent(msgs), publisher_cls=LegacyPublisher))
    for name, share in (("traced", 1.0), ("sampled", ratio)):
        tracing = start_tracing(url, share)
        try:
            results.setdefault(name, []).append(
                await run(name, at_ratio(msgs, share), tracing=tracing))
        finally:
            tracing.shutdown()
    print(f"round {r + 1}: before {results['before'][-1]:,.0f}/s  traced "
          f"{results['traced'][-1]:,.0f}/s  sampled ({ratio:g}) "
          f"{results['sampled'][-1]:,.0f}/s")


def report(med: dict[str, float], rounds: str, ratio: float) -> None:
    bare = med["bare"]
    for key, label in (("before", "before trace context"),
                       ("relay", "traceparent, tracing off"),
                       ("traced", "tracing on, sample ratio 1"),
                       ("sampled", f"tracing on, sample ratio {ratio:g}")):
        emit(f"outbox+relay events/s, {label} ({rounds})", round(med[key]), "events/s",
             ceiling=round(bare), ratio=round(med[key] / bare, 3))
    print("tracing: ratio to the ceiling " + ", ".join(
        f"{k} {med[k] / bare:.3f}" for k in ("before", "relay", "traced", "sampled"))
        + f"; after/before {med['relay'] / med['before']:.3f}")


def _events(n: int) -> list[ChangeEvent]:
    return [ChangeEvent(adapter="erp", schema="public", table="invoices", op="c",
                        position=f"cap:{i}", key={"id": i},
                        after={"id": i, "customer": f"cust-{i % 97}", "amount": f"{i}.25",
                               "note": "lorem ipsum dolor sit amet " * 4, "status": "open"},
                        ts_ms=int(time.time() * 1000)) for i in range(n)]


def _legacy_encode(ev: ChangeEvent) -> bytes:
    ce: dict[str, Any] = ev.to_cloudevent()
    del ce["traceparent"]
    return dumps(ce)


def _per_event_us(work: Callable[[], object], n: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def capture_costs(_make: Any, url: str, ratio: float, n: int = 20_000) -> None:
    """Capture-side microseconds per event: encoding, and the capture/commit spans."""
    events = _events(n)
    batch = ChangeBatch(events=events, checkpoint=None)
    plain = _per_event_us(lambda: [_legacy_encode(e) for e in events], n)
    with_tp = _per_event_us(lambda: encode_batch(batch, "cdc"), n)
    emit("encode us/event before trace context", round(plain, 3), "us")
    emit("encode_batch us/event with traceparent", round(with_tp, 3), "us")
    for share in (1.0, ratio):
        tracing = start_tracing(url, share)
        msgs = encode_batch(batch, "cdc", share)
        now = time.time_ns()
        per = _per_event_us(lambda t=tracing, m=msgs, t0=now: t.committed(
            "erp", batch, m, t0, t0 + 1000, t0 + 2000), n, repeat=3)
        tracing.shutdown()
        emit(f"capture+commit spans us/event, sample ratio {share:g}", round(per, 3), "us")
        print(f"capture side: encode {plain:.2f} -> {with_tp:.2f} us/event with the "
              f"traceparent; spans at ratio {share:g}: {per:.2f} us/event")
