"""What every ``bench/bench_*.py`` script needs, written once.

- :func:`services`: a temp dir and a nats-server (plus PostgreSQL / MariaDB when asked),
  from ``tests/services`` on free ports, all torn down on exit;
- :func:`bridge_config` / :func:`bridge`: ``cdc-bridge run`` as a real child process
  (``tests.helpers.BridgeProcess``) against a config written into the temp dir;
- :func:`publish_ceiling`: the sink ceiling every ratio is measured against, a bare
  nats-py ``publish_async`` loop on the same server in the same run, with the client
  settings the bridge's publisher uses (64 MiB pending buffer, a 600 s duplicate window,
  ``max_in_flight`` unacknowledged publishes, a ``Nats-Msg-Id`` on each);
- :func:`stream_count`, :func:`wait_stored`, :func:`read_stored`: what a stream holds,
  waiting until it holds N messages (one connection, polled), reading payloads back;
- :func:`vmhwm_mb`: peak RSS of a process (``VmHWM`` from ``/proc``);
- :class:`Pacer` and :func:`latency`: fixed-rate writers and one percentile definition;
- :func:`emit` / :func:`emit_series`: the ``BENCH {json}`` / ``BENCH_SERIES {json}`` lines
  :mod:`bench.report` reads (a script that prints one BENCH line must print one for
  every figure it wants in the table: the report then ignores its prose).

Times returned by the stream helpers are wall-clock (``time.time()``), so they compare
with commit times and with JetStream's stored timestamps.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import api

from tests.helpers import BridgeProcess, write_config
from tests.services.mariadb import MariaDBServer
from tests.services.nats_server import NatsServer
from tests.services.postgres import PostgresServer

T = TypeVar("T")

#: The bridge publisher's client settings (bridge/relay/publisher.py, bridge/relay/relay.py,
#: NatsConfig.duplicate_window): the ceiling uses the same.
PENDING_BYTES = 64 << 20
MAX_IN_FLIGHT = 4000
DUPLICATE_WINDOW_S = 600.0


# -- servers and the bridge -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Services:
    workdir: Path
    nats: NatsServer
    postgres: PostgresServer | None
    mariadb: MariaDBServer | None


@contextmanager
def services(prefix: str, *, postgres: bool = False, mariadb: bool = False,
             keep: bool = False) -> Iterator[Services]:
    """A temp dir holding a running nats-server (and the asked databases); all removed after.

    ``keep`` leaves the dir (logs, files) in place and says where.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    started: list[Any] = []
    try:
        pg = PostgresServer() if postgres else None
        maria = MariaDBServer() if mariadb else None
        ns = NatsServer(workdir / "nats")
        for server in (pg, maria, ns):
            if server is not None:
                server.start()
                started.append(server)
        yield Services(workdir, ns, pg, maria)
    finally:
        for server in reversed(started):
            if isinstance(server, NatsServer):
                server.stop()
            else:
                server.destroy()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def bridge_config(workdir: Path, nats_url: str, adapters: list[dict[str, Any]], *,
                  nats_extra: dict[str, Any] | None = None,
                  log_level: str | None = None) -> dict[str, Any]:
    """A bridge config: state under ``workdir``, stream ``CDC``, subjects ``cdc.>``."""
    cfg: dict[str, Any] = {
        "state_dir": str(workdir / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc", **(nats_extra or {})},
        "adapters": adapters,
    }
    if log_level:
        cfg["log"] = {"level": log_level}
    return cfg


@contextmanager
def bridge(workdir: Path, config: dict[str, Any], *, start: bool = True,
           stop_timeout_s: float = 60.0) -> Iterator[BridgeProcess]:
    """``cdc-bridge run`` on ``config`` (written to ``workdir/bridge.yaml``, log beside it).

    Started unless ``start=False``; stopped on exit (SIGTERM, then SIGKILL if it hangs).
    """
    proc = BridgeProcess(write_config(workdir / "bridge.yaml", config), workdir / "bridge.log")
    if start:
        proc.start()
    try:
        yield proc
    finally:
        if proc.alive():
            try:
                proc.terminate(stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill9()


def wait_log(proc: BridgeProcess, text: str, timeout_s: float = 30.0) -> bool:
    """Whether ``text`` appeared in the bridge's log within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while text not in proc.log():
        if time.monotonic() > deadline or not proc.alive():
            return False
        time.sleep(0.1)
    return True


def vmhwm_mb(pid: int | str = "self") -> float:
    """Peak resident set size (``VmHWM``) of process ``pid`` in MiB (``"self"``: this one)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no VmHWM in /proc/{pid}/status")


# -- the ceiling ------------------------------------------------------------------------


async def publish_ceiling(url: str, payload: Sequence[bytes] | int, *, subject: str,
                          count: int | None = None, max_in_flight: int = MAX_IN_FLIGHT,
                          msg_ids: Sequence[str] | None = None,
                          stream: str = "CEILING") -> float:
    """msgs/s of a bare nats-py ``publish_async`` loop awaiting every PubAck.

    ``payload``: the bodies (cycled up to ``count``, which defaults to their number) or a
    body size in bytes. Each message gets a ``Nats-Msg-Id``: ``msg_ids[i]`` (one per
    message) or a made-up unique one. Published on ``subject`` into a fresh ``stream``
    that is checked to hold them all, then deleted.
    """
    bodies = [b"x" * payload] if isinstance(payload, int) else list(payload)
    total = len(bodies) if count is None else count
    ids = list(msg_ids) if msg_ids is not None else [f"{stream}-{i}" for i in range(total)]
    if not bodies or len(ids) < total:
        raise ValueError("need at least one body and one message id per message")
    nc = await nats.connect(url, pending_size=PENDING_BYTES)
    try:
        js = nc.jetstream(publish_async_max_pending=max_in_flight)
        await js.add_stream(api.StreamConfig(name=stream, subjects=[subject],
                                             duplicate_window=DUPLICATE_WINDOW_S))
        n_bodies = len(bodies)
        start = time.perf_counter()
        for i in range(total):
            await js.publish_async(subject, bodies[i % n_bodies],
                                   headers={"Nats-Msg-Id": ids[i]})
        await js.publish_async_completed()
        elapsed = time.perf_counter() - start
        stored = (await js.stream_info(stream)).state.messages
        if stored != total:
            raise RuntimeError(f"ceiling stream holds {stored} of {total} messages "
                               "(message ids repeat?)")
        await js.delete_stream(stream)
        return total / elapsed
    finally:
        await nc.close()


# -- reading the stream -----------------------------------------------------------------


def _on_nats(url: str, work: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``work`` (in a new event loop) on a fresh connection to ``url``, closed after."""
    async def go() -> T:
        nc = await nats.connect(url)
        try:
            return await work(nc)
        finally:
            await nc.close()
    return asyncio.run(go())


def _schema_event(subject: str) -> bool:
    """A schema-change event (``<prefix>._schema.>``): not a row, never counted here."""
    parts = subject.split(".", 2)
    return len(parts) > 1 and parts[1] == "_schema"


async def _messages(nc: Client, stream: str) -> int:
    """Row messages ``stream`` holds: all of them but the schema-change events."""
    js = nc.jetstream()
    try:
        total = int((await js.stream_info(stream)).state.messages)
        if not total:
            return 0
        per = await js.stream_info(stream, subjects_filter="*._schema.>")
    except nats.js.errors.NotFoundError:
        return 0
    return total - sum((per.state.subjects or {}).values())


def stream_count(url: str, stream: str = "CDC") -> int:
    """Row messages ``stream`` holds now (0 if it does not exist yet; schema-change
    events are not counted)."""
    return _on_nats(url, lambda nc: _messages(nc, stream))


@dataclass(frozen=True, slots=True)
class Stored:
    first_at: float  # wall clock when the count first rose above its starting value
    done_at: float  # wall clock when it reached the wanted number


def wait_stored(url: str, want: int, *, stream: str = "CDC", timeout_s: float = 600.0,
                interval_s: float = 0.05, bridge: BridgeProcess | None = None,
                stall_s: float | None = None) -> Stored:
    """Poll (one connection) until ``stream`` holds ``want`` messages.

    Raises ``TimeoutError`` after ``timeout_s``, or once the count has not moved for
    ``stall_s``; ``RuntimeError`` if ``bridge`` exits meanwhile (both carry the tail of
    ``bridge``'s log, which says why).
    """
    def failed(error: type[Exception], why: str) -> Exception:
        tail = f"; bridge log ends:\n{bridge.log()[-3000:]}" if bridge is not None else ""
        return error(why + tail)

    async def poll(nc: Client) -> Stored:
        initial = last = await _messages(nc, stream)
        first: float | None = None
        moved = time.monotonic()
        deadline = moved + timeout_s
        while True:
            n, now, mono = await _messages(nc, stream), time.time(), time.monotonic()
            if first is None and n > initial:
                first = now
            if n != last:
                last, moved = n, mono
            if n >= want:
                return Stored(first or now, now)
            if bridge is not None and not bridge.alive():
                raise failed(RuntimeError, f"bridge exited with {n} of {want} messages stored")
            if mono > deadline or (stall_s is not None and mono - moved > stall_s):
                raise failed(TimeoutError, f"{stream} holds {n} of {want} messages "
                             f"(timeout {timeout_s:g}s, stall limit {stall_s}s)")
            await asyncio.sleep(interval_s)
    return _on_nats(url, poll)


@dataclass(frozen=True, slots=True)
class Message:
    data: bytes
    stored_at: float  # JetStream's stored timestamp, wall clock seconds


def read_stored(url: str, stream: str = "CDC", *, start_seq: int = 1,
                limit: int | None = None) -> list[Message]:
    """The row messages of ``stream`` from ``start_seq`` up to its last one (or
    ``limit``): schema-change events are left out."""
    async def read(nc: Client) -> list[Message]:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        out: list[Message] = []
        if state.messages == 0 or state.last_seq < start_seq:
            return out
        sub = await js.pull_subscribe(">", stream=stream, config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq))
        idle, seq = 0, 0
        while seq < state.last_seq and idle < 3 and (limit is None or len(out) < limit):
            try:
                msgs = await sub.fetch(2000, timeout=5.0)
            except (nats.errors.TimeoutError, TimeoutError):
                idle += 1
                continue
            for m in msgs:
                seq = m.metadata.sequence.stream
                if not _schema_event(m.subject):
                    out.append(Message(m.data, m.metadata.timestamp.timestamp()))
        await sub.unsubscribe()
        return out if limit is None else out[:limit]
    return _on_nats(url, read)


# -- pacing and percentiles -------------------------------------------------------------


class Pacer:
    """Ticks of ``per_tick`` writes at ``rate`` writes/s, without drift, for ``seconds``.

    Loop ``while pacer.running(): write(); sleep(pacer.pause_s())`` (``time.sleep`` or
    ``asyncio.sleep``).
    """

    def __init__(self, rate: float, per_tick: int, seconds: float = math.inf) -> None:
        self.interval_s = per_tick / rate
        self._next = time.monotonic()
        self._end = self._next + seconds

    def running(self) -> bool:
        return time.monotonic() < self._end

    def pause_s(self) -> float:
        """Seconds to sleep until the next tick."""
        self._next += self.interval_s
        return max(0.0, self._next - time.monotonic())


@dataclass(frozen=True, slots=True)
class Latency:
    n: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def latency(values_ms: Iterable[float]) -> Latency:
    """p50/p99 (nearest rank) and max of ``values_ms``; at least one value."""
    ms = sorted(values_ms)
    if not ms:
        raise ValueError("no latency samples")

    def rank(q: float) -> float:
        return ms[max(0, math.ceil(q * len(ms)) - 1)]

    return Latency(len(ms), rank(0.50), rank(0.99), ms[-1])


# -- output -----------------------------------------------------------------------------


def emit(metric: str, value: float, unit: str = "", *, ceiling: float | None = None,
         ratio: float | None = None, peak_rss_mb: float | None = None) -> None:
    """One ``BENCH {json}`` line (bench/report.py's table row); ``None`` fields left out."""
    line: dict[str, Any] = {"metric": metric, "value": value, "unit": unit}
    extra = {"ceiling": ceiling, "ratio": ratio, "peak_rss_mb": peak_rss_mb}
    line.update({k: v for k, v in extra.items() if v is not None})
    print("BENCH " + json.dumps(line), flush=True)


def emit_series(name: str, kind: str, points: list[Any]) -> None:
    """One ``BENCH_SERIES {json}`` line; ``kind``: ``throughput`` ([[t_s, per_s], ...]) or
    ``latency`` ([ms, ...])."""
    if kind not in ("throughput", "latency"):
        raise ValueError(f"unknown series kind {kind!r}")
    print("BENCH_SERIES " + json.dumps({"name": name, "kind": kind, "points": points}),
          flush=True)


async def relay_to_end(relay: Any, task: asyncio.Task[Any], n: int, start: float) -> float:
    """Wait until ``relay`` has settled ``n`` rows (``task`` runs it), stop it, drop its
    streams (the bench stream and the dead-letter one beside it); returns events/s."""
    while relay.stats.published + relay.stats.duplicates < n:
        if task.done():
            task.result()
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - start
    relay.stop()
    await task
    js = relay.publisher.js
    assert js is not None
    stream = relay.publisher.cfg.stream
    await js.delete_stream(stream)
    await js.delete_stream(f"{stream}_DLQ")
    await relay.publisher.close()
    return float(n / elapsed)

