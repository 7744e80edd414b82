"""The source conformance kit: what every source type must do, checked through a harness.

The source contract (:mod:`cdc_bridge.adapters.contract`) promises the daemon a few things
that no single source's own tests can hold every other source to. Each check here is a
function of a :class:`Harness` (one per source type, in ``tests/harnesses/<type>.py``) and
runs the source exactly as the daemon's capture loop does: a real SQLite outbox, the
checkpoint loaded from it, every batch committed with
:meth:`~cdc_bridge.outbox.writer.OutboxWriter.commit` and only then acknowledged.

1. :func:`check_resumes_exactly`: a new instance started from the committed checkpoint
   yields exactly the changes made after it (compared by source key *and* event id), and
   two starts from the same checkpoint yield the same ids.
2. :func:`check_forgets_nothing_before_commit`: a batch read but not committed (a crash
   before the commit) comes again, with the same ids, from the next instance; and
   :func:`check_daemon_acknowledges_after_commit`: the daemon itself acknowledges a
   checkpoint only once the outbox holds it.
3. :func:`check_close_twice`: ``close()`` twice is harmless, before and after a run.
4. :func:`check_unreachable_is_retryable`: an unreachable source raises a
   :class:`~cdc_bridge.kernel.errors.RetryableError` within a bounded time.
5. :func:`check_missing_privilege_is_fatal`: a missing privilege raises a
   :class:`~cdc_bridge.kernel.errors.FatalError` that names it.
6. :func:`check_reports_connected_and_lag`: ``connected`` is true while capturing and
   ``lag()`` is a ``dict[str, float]``; ``connected`` is false once closed.

Every wait is bounded; a harness's ``write(n)`` returns the source keys of the n changes
it made, and the checks assert on those keys and on the event ids, never on counts alone.
Checks 1 and 2 begin with :func:`first_run`, which reads until a change made after the
start arrived, so the instances after it resume in the source's steady state (streaming,
polling), from a checkpoint cut inside a multi-batch write (``B_CHANGES`` is more than
the harnesses' batch sizes). "Exactly these changes" is proven with a sentinel: a change
made after them that the same instance reads next (sources yield in source order).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import pytest

from cdc_bridge.adapters.contract import (
    Adapter,
    AdapterConfig,
    AdapterContext,
    ChangeBatch,
    Checkpoint,
)
from cdc_bridge.adapters.registry import REGISTRY, AdapterType, create
from cdc_bridge.config import BridgeConfig
from cdc_bridge.daemon.daemon import Daemon
from cdc_bridge.kernel.errors import FatalError, RetryableError
from cdc_bridge.kernel.events import ChangeEvent, RoutedMessage
from cdc_bridge.outbox.runner import AsyncStore
from cdc_bridge.outbox.sqlite import SqliteStore
from cdc_bridge.outbox.writer import OutboxWriter
from tests.helpers import committed_checkpoint
from tests.toy_source import PlainAdapter, ToyConfig

#: What a source hands the outbox per change: a row event or a routed message.
Item = ChangeEvent | RoutedMessage

PREFIX = "cdc"
#: Bound on one phase of a check (start a source, read what was written).
PHASE_TIMEOUT_S = 60.0
#: Bound on an unreachable source or a missing privilege being reported.
ERROR_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------- harness


@dataclass(frozen=True, slots=True)
class Denied:
    """A config that reaches the source but lacks a privilege capture needs."""

    #: What is missing, for messages ("role without REPLICATION").
    what: str
    config: AdapterConfig
    #: A regular expression the fatal error's text must match (it names the problem).
    problem: str


@dataclass(frozen=True, slots=True)
class NotApplicable:
    """Why a source type can have no such case here (the check is skipped with it)."""

    reason: str


class Harness(Protocol):
    """Drives one source type for the kit; made by its module's ``open_harness``."""

    #: The registry type this harness exercises.
    source_type: str

    def config(self, name: str) -> AdapterConfig:
        """A reachable source in a capturing mode, resumable from its checkpoints; every
        call returns the same source (same database, slot, folder) under ``name``."""
        ...

    async def write(self, n: int) -> list[str]:
        """Make ``n`` new changes at the source that yield exactly ``n`` events or
        messages; return their source keys (unique over the harness's life)."""
        ...

    def key(self, item: Item) -> str:
        """The source key of an event or message that :meth:`write` made."""
        ...

    def unreachable(self, name: str) -> AdapterConfig:
        """The same kind of source where nothing can be reached (closed port, no mount)."""
        ...

    async def released(self) -> None:
        """Return once the source let go of what a closed instance held (a server ends a
        replication session after its client left); fail if it does not, within a bound.
        The daemon's supervisor backs off before a restart; the kit restarts at once."""
        ...

    async def no_privilege(self, name: str) -> Sequence[Denied] | NotApplicable:
        """Configs that reach the source without a privilege capture needs, or why there
        can be none here."""
        ...


class OpenHarness(Protocol):
    """``open_harness`` of a harness module: set-up and tear-down around one check."""

    def __call__(self, request: pytest.FixtureRequest,
                 workdir: Path) -> AbstractAsyncContextManager[Harness]: ...


def harness_module(source_type: str) -> str:
    return f"tests.harnesses.{source_type}"


def load_harness(source_type: str) -> OpenHarness:
    """The ``open_harness`` of ``tests/harnesses/<source_type>.py``; fails the test if none."""
    module_name = harness_module(source_type)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        pytest.fail(f"source type {source_type} has no conformance harness: add "
                    f"tests/harnesses/{source_type}.py", pytrace=False)
    opener: OpenHarness | None = getattr(module, "open_harness", None)
    if opener is None:
        pytest.fail(f"tests/harnesses/{source_type}.py defines no open_harness(request, "
                    "workdir)", pytrace=False)
    return opener


@contextlib.asynccontextmanager
async def harness_for(source_type: str, request: pytest.FixtureRequest,
                      workdir: Path) -> AsyncIterator[Harness]:
    async with load_harness(source_type)(request, workdir) as harness:
        assert harness.source_type == source_type, (
            f"tests/harnesses/{source_type}.py made a harness for {harness.source_type}")
        yield harness


# --------------------------------------------------------------------------- driving


Commit = Literal["all", "none", "all_but_last"]
#: ``until(seen, new)``: stop reading? ``seen`` counts every key read so far (``new``
#: included), ``new`` are the keys of the batch just read.
Until = Callable[[Counter[str], list[str]], bool]


def covers(keys: Sequence[str]) -> Until:
    """Until every one of ``keys`` was read."""
    wanted = set(keys)
    return lambda seen, new: wanted <= seen.keys()


def covers_or_repeats(keys: Sequence[str]) -> Until:
    """Until every one of ``keys`` was read, or a batch brings only keys read before: a
    source may offer changes it was not told are committed again (the daemon never reads
    on without acknowledging, so nothing more can be asked of it)."""
    wanted = set(keys)
    return lambda seen, new: wanted <= seen.keys() or (bool(new) and all(
        seen[k] > 1 for k in new))


@dataclass(frozen=True, slots=True)
class Report:
    """What the adapter declared (``connected``, ``lag()``) right after a batch."""

    connected: bool
    lag: object


@dataclass(eq=False)
class Instance:
    """One adapter instance, read like the daemon's capture loop reads it."""

    bench: Bench
    adapter: Adapter
    start_checkpoint: Checkpoint | None
    gen: AsyncIterator[ChangeBatch]
    items: list[Item] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    #: Items of batches committed to the outbox (and then acknowledged).
    committed: list[Item] = field(default_factory=list)
    #: Items read but held back from the outbox (``commit="all_but_last"``/``"none"``).
    held: list[Item] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)
    stopped: bool = False
    closed: bool = False

    def ids_by_key(self) -> dict[str, str]:
        return {k: item.id for k, item in zip(self.keys, self.items, strict=True)}

    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    async def take(self, until: Until, *, commit: Commit, what: str,
                   timeout_s: float = PHASE_TIMEOUT_S) -> None:
        """Read batches until ``until`` holds. ``commit="all"``: commit each batch to the
        outbox, then acknowledge it (the daemon); ``"none"``: commit nothing;
        ``"all_but_last"``: all but the batch on which ``until`` holds."""
        h = self.bench.harness
        seen = Counter(self.keys)
        timer = asyncio.timeout(timeout_s)
        try:
            async with timer:
                while True:
                    try:
                        batch = await anext(self.gen)
                    except StopAsyncIteration:
                        raise AssertionError(f"{what}: the source ended its changes early "
                                             f"(read so far: {sorted(seen)})") from None
                    self.reports.append(Report(self.adapter.connected, self.adapter.lag()))
                    assert not batch.dead_letters, (
                        f"{what}: unexpected dead letters: "
                        f"{[d.reason for d in batch.dead_letters]}")
                    new_items: list[Item] = [*batch.events, *batch.messages]
                    new = [h.key(item) for item in new_items]
                    self.items += new_items
                    self.keys += new
                    seen.update(new)
                    done = until(seen, new)
                    if commit == "all" or (commit == "all_but_last" and not done):
                        if len(batch) or batch.checkpoint is not None:
                            await self.bench.writer.commit(batch)
                            self.committed += new_items
                            await self.adapter.acknowledge(batch.checkpoint)
                    else:
                        self.held += new_items
                    if done:
                        return
        except TimeoutError:
            if not timer.expired():
                raise
            raise AssertionError(f"{what}: timed out after {timeout_s:.0f}s; read so far: "
                                 f"{sorted(seen)}") from None

    async def stop(self) -> None:
        """Stop reading as the daemon stops a capture task: cancel the pending read
        (whatever it brings is never committed) and finish the generator."""
        if self.stopped:
            return
        self.stopped = True

        async def next_batch() -> ChangeBatch:
            return await anext(self.gen)

        pending = asyncio.ensure_future(next_batch())
        await asyncio.sleep(0)
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await pending
        aclose = getattr(self.gen, "aclose", None)
        if aclose is not None:
            await aclose()

    async def close(self) -> None:
        await self.stop()
        if not self.closed:
            self.closed = True
            await self.adapter.close()
            await self.bench.harness.released()


class Bench:
    """One check's world: a harness, a real SQLite outbox, the adapter instances started."""

    def __init__(self, harness: Harness, workdir: Path, name: str = "conf") -> None:
        self.harness = harness
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        self.store = AsyncStore(SqliteStore(workdir / f"outbox-{name}.db"))
        self.writer = OutboxWriter(self.store, name, PREFIX)
        self.context = AdapterContext(state_dir=workdir / "state", subject_prefix=PREFIX)
        self.instances: list[Instance] = []

    async def committed(self) -> Checkpoint | None:
        """The adapter's checkpoint as the outbox holds it (what the daemon resumes from)."""
        return await self.store.checkpoint(self.name)

    async def outbox_ids(self) -> list[str]:
        """Ids of every message committed to the outbox (no relay runs: none removed)."""
        return [row.message.msg_id for row in await self.store.pending(0, 1_000_000)]

    def adapter(self, config: AdapterConfig | None = None) -> Adapter:
        return create(config or self.harness.config(self.name), self.context)

    async def start(self, config: AdapterConfig | None = None) -> Instance:
        """A new instance from the committed checkpoint, loaded as the daemon loads it."""
        checkpoint = await self.committed()
        adapter = self.adapter(config)
        instance = Instance(self, adapter, checkpoint, aiter(adapter.changes(checkpoint)))
        self.instances.append(instance)
        return instance

    async def aclose(self) -> None:
        try:
            for instance in self.instances:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(instance.close(), 30)
        finally:
            self.store.close()


def exactly(instance: Instance, keys: Sequence[str], what: str) -> None:
    """The instance read each of ``keys`` once and nothing else, each with its own id."""
    counts = Counter(instance.keys)
    dupes = sorted(k for k, n in counts.items() if n > 1)
    assert not dupes, f"{what}: read more than once: {dupes}"
    extra = sorted(set(counts) - set(keys))
    assert not extra, f"{what}: read changes it should not have: {extra}"
    missing = sorted(set(keys) - set(counts))
    assert not missing, f"{what}: missed changes: {missing}"
    ids = instance.ids()
    assert len(set(ids)) == len(ids), f"{what}: two changes share an id: {ids}"


def _json(value: Any) -> Any:
    """``value`` as the outbox stores it (JSON round trip)."""
    return json.loads(json.dumps(value))


# --------------------------------------------------------------------------- checks

#: Changes made before the first start, and after the first run.
A_CHANGES = 5
B_CHANGES = 7


async def first_run(bench: Bench) -> Instance:
    """The first start (no checkpoint) with changes A made before it, read and committed
    like the daemon does until one change made after the start arrived too: the source
    has then finished any initial snapshot or catching up, and stopped in its steady
    state (streaming, polling, watching)."""
    harness = bench.harness
    a_keys = await harness.write(A_CHANGES)
    first = await bench.start()
    assert first.start_checkpoint is None
    await first.take(covers(a_keys), commit="all", what="first run (changes A)")
    later = await harness.write(1)
    await first.take(covers(later), commit="all", what="first run (a change after A)")
    await first.close()
    exactly(first, [*a_keys, *later], "first run")
    return first


async def check_resumes_exactly(harness: Harness, workdir: Path) -> None:
    """Resumes exactly after a committed checkpoint; starts from one checkpoint agree."""
    bench = Bench(harness, workdir)
    try:
        first = await first_run(bench)
        a_keys, a_ids = first.keys, set(first.ids())
        after_a = await bench.committed()
        assert after_a is not None, "no checkpoint committed with the first run's batches"

        b_keys = await harness.write(B_CHANGES)
        # two starts from the same committed checkpoint, never acknowledged: same ids
        reads: list[Instance] = []
        for attempt in (1, 2):
            inst = await bench.start()
            assert inst.start_checkpoint == after_a
            await inst.take(covers_or_repeats(b_keys), commit="none",
                            what=f"start {attempt} from the committed checkpoint")
            await inst.close()
            again = sorted(set(inst.keys) & set(a_keys))
            assert not again, f"start {attempt}: committed changes read again: {again}"
            assert not set(inst.ids()) & a_ids, f"start {attempt}: reused ids of changes A"
            assert set(inst.keys) <= set(b_keys), sorted(set(inst.keys) - set(b_keys))
            reads.append(inst)
        assert reads[0].ids_by_key() == reads[1].ids_by_key(), (
            "two starts from the same checkpoint gave different ids: "
            f"{reads[0].ids_by_key()} != {reads[1].ids_by_key()}")
        assert await bench.committed() == after_a, "the outbox checkpoint moved without commits"

        final = await bench.start()
        await final.take(covers(b_keys), commit="all", what="run after the checkpoint (B)")
        # a later change proves nothing else was pending before it: sources yield in order
        sentinel = await harness.write(1)
        await final.take(covers(sentinel), commit="all", what="the change after B")
        await final.close()
        exactly(final, [*b_keys, *sentinel], "run from the committed checkpoint")
        reused = set(final.ids()) & a_ids
        assert not reused, f"changes B got ids of changes A: {sorted(reused)}"
        earlier = reads[0].ids_by_key()
        differ = {k: (earlier[k], i) for k, i in final.ids_by_key().items()
                  if k in earlier and earlier[k] != i}
        assert not differ, f"ids changed between starts from one checkpoint: {differ}"
        stored = Counter(await bench.outbox_ids())
        expected = Counter([*first.ids(), *final.ids()])
        assert stored == expected, (
            f"outbox holds {sorted(stored.elements())}, committed {sorted(expected.elements())}")
    finally:
        await bench.aclose()


async def check_forgets_nothing_before_commit(harness: Harness, workdir: Path) -> None:
    """What was read but not committed (a crash before the commit) comes again, with the
    same ids: the source forgot nothing on an acknowledgement it was not given."""
    bench = Bench(harness, workdir)
    try:
        first = await first_run(bench)

        b_keys = await harness.write(B_CHANGES)
        crashed = await bench.start()
        await crashed.take(covers(b_keys), commit="all_but_last",
                           what="run that crashes before its last commit")
        await crashed.close()
        exactly(crashed, b_keys, "run that crashed")
        held = {harness.key(item): item.id for item in crashed.held}
        assert held, "the run that crashed held nothing back"
        checkpoint = await bench.committed()

        again = await bench.start()
        assert again.start_checkpoint == checkpoint
        await again.take(covers(list(held)), commit="all", what="run after the crash")
        sentinel = await harness.write(1)
        await again.take(covers(sentinel), commit="all", what="the change after the crash")
        await again.close()
        exactly(again, [*held, *sentinel], "run after the crash (the uncommitted batch)")
        changed = {k: (i, again.ids_by_key()[k]) for k, i in held.items()
                   if again.ids_by_key()[k] != i}
        assert not changed, f"uncommitted changes came back with other ids: {changed}"
        stored = Counter(await bench.outbox_ids())
        expected = Counter(i.id for i in [*first.committed, *crashed.committed,
                                          *again.committed])
        assert stored == expected
        assert set(stored) >= {*first.ids(), *crashed.ids()}, "a change never reached the outbox"
    finally:
        await bench.aclose()


async def check_close_twice(harness: Harness, workdir: Path) -> None:
    """``close()`` twice is harmless: on a never-started instance and after a run."""
    bench = Bench(harness, workdir)
    try:
        fresh = bench.adapter()
        await asyncio.wait_for(fresh.close(), 30)
        await asyncio.wait_for(fresh.close(), 30)
        assert not fresh.connected

        keys = await harness.write(2)
        inst = await bench.start()
        await inst.take(covers(keys), commit="all", what="run before closing")
        await inst.stop()
        await asyncio.wait_for(inst.adapter.close(), 30)
        await asyncio.wait_for(inst.adapter.close(), 30)
        inst.closed = True
        await harness.released()
        assert not inst.adapter.connected, "connected is still true after close()"
        exactly(inst, keys, "run before closing")
    finally:
        await bench.aclose()


async def _first_error(bench: Bench, config: AdapterConfig,
                       what: str) -> tuple[BaseException, Adapter]:
    """Run ``config`` like the daemon until it raises; fail if it does not within
    :data:`ERROR_TIMEOUT_S` or yields changes instead."""
    adapter = bench.adapter(config)
    gen = aiter(adapter.changes(None))
    timer = asyncio.timeout(ERROR_TIMEOUT_S)
    yielded: list[str] = []
    error: BaseException | None = None
    try:
        async with timer:
            async for batch in gen:
                items: list[Item] = [*batch.events, *batch.messages]
                yielded += [i.id for i in items]
                if len(batch) or batch.checkpoint is not None:
                    await bench.writer.commit(batch)
                    await adapter.acknowledge(batch.checkpoint)
    except Exception as e:
        error = None if timer.expired() else e
    if error is None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(adapter.close(), 30)
        ended = "hung" if timer.expired() else "ended its changes"
        pytest.fail(f"{what}: {ended} without an error within {ERROR_TIMEOUT_S:.0f}s "
                    f"(changes read: {len(yielded)})", pytrace=False)
    return error, adapter


def _describe(e: BaseException) -> str:
    return f"{type(e).__module__}.{type(e).__name__}: {e}"


async def check_unreachable_is_retryable(harness: Harness, workdir: Path) -> None:
    """An unreachable source raises a RetryableError, promptly, and is not connected."""
    bench = Bench(harness, workdir, name="unreachable")
    try:
        error, adapter = await _first_error(bench, harness.unreachable(bench.name),
                                            "unreachable source")
        assert isinstance(error, RetryableError) and not isinstance(error, FatalError), (
            f"unreachable source must raise a RetryableError, raised {_describe(error)}")
        assert not adapter.connected, "connected is true although the source is unreachable"
        await asyncio.wait_for(adapter.close(), 30)
        await asyncio.wait_for(adapter.close(), 30)
    finally:
        await bench.aclose()


async def check_missing_privilege_is_fatal(harness: Harness, workdir: Path) -> None:
    """A missing privilege raises a FatalError naming the problem."""
    cases = await harness.no_privilege("denied")
    if isinstance(cases, NotApplicable):
        pytest.skip(cases.reason)
    assert cases, "no_privilege returned no case: return NotApplicable(reason) instead"
    await harness.write(1)  # something to read, so that acknowledging is exercised too
    failures: list[str] = []
    for n, case in enumerate(cases):
        bench = Bench(harness, workdir, name=case.config.name)
        try:
            error, adapter = await _first_error(bench, case.config, case.what)
            await asyncio.wait_for(adapter.close(), 30)
            if not isinstance(error, FatalError):
                failures.append(f"case {n} ({case.what}): must raise a FatalError, raised "
                                f"{_describe(error)}")
            elif not re.search(case.problem, str(error)):
                failures.append(f"case {n} ({case.what}): the error does not name the "
                                f"problem /{case.problem}/: {_describe(error)}")
        finally:
            await bench.aclose()
    assert not failures, "\n".join(failures)


async def check_reports_connected_and_lag(harness: Harness, workdir: Path) -> None:
    """``connected`` is true while capturing, ``lag()`` a ``dict[str, float]`` (after
    batches and while idle); ``connected`` is false once closed."""
    bench = Bench(harness, workdir)

    def valid_lag(lag: object) -> bool:
        return isinstance(lag, dict) and all(
            isinstance(k, str) and type(v) is float for k, v in lag.items())

    try:
        keys = await harness.write(3)
        inst = await bench.start()
        await inst.take(covers(keys), commit="all", what="run")
        exactly(inst, keys, "run")
        assert inst.reports
        for r in inst.reports:
            assert r.connected, "connected is false while the source yields changes"
            assert valid_lag(r.lag), f"lag() must be a dict of str to float, got {r.lag!r}"
        # idle, waiting for the next change: what the daemon reads once a second
        pending = asyncio.ensure_future(anext(inst.gen))
        try:
            await asyncio.wait({pending}, timeout=0.5)
            assert inst.adapter.connected, "connected is false while capturing (idle)"
            lag = inst.adapter.lag()
            assert valid_lag(lag), f"lag() must be a dict of str to float, got {lag!r}"
        finally:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await inst.close()
        assert not inst.adapter.connected, "connected is still true after close()"
    finally:
        await bench.aclose()


# --------------------------------------------------------------------------- daemon


class RecordingToy(PlainAdapter):
    """The toy source, recording at each acknowledge what the outbox holds for it."""

    outbox: ClassVar[Path]
    #: (adapter, acknowledged checkpoint, checkpoint committed in the outbox then)
    acks: ClassVar[list[tuple[str, Checkpoint | None, Checkpoint | None]]] = []

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        stored = await asyncio.to_thread(committed_checkpoint, self.outbox, self.name)
        self.acks.append((self.name, checkpoint, stored))
        await super().acknowledge(checkpoint)


def _recording_factory(cfg: AdapterConfig, context: AdapterContext) -> Adapter:
    assert isinstance(cfg, ToyConfig)
    return RecordingToy(cfg)


async def check_daemon_acknowledges_after_commit(workdir: Path, nats_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon acknowledges each checkpoint only when the outbox already holds it."""
    monkeypatch.setitem(REGISTRY, "t_plain",
                        AdapterType("t_plain", ToyConfig, _recording_factory))
    monkeypatch.setattr(PlainAdapter, "starts", {})
    monkeypatch.setattr(RecordingToy, "acks", [])
    rows = {"steady": 12, "crashy": 9}
    adapters = [ToyConfig(name="steady", type="t_plain", rows=rows["steady"]),
                ToyConfig(name="crashy", type="t_plain", rows=rows["crashy"], fail_times=1)]
    base = BridgeConfig.model_validate({
        "state_dir": str(workdir / "state"),
        "nats": {"url": nats_url, "ack_timeout": "3s"},
        "outbox": {"poll_interval": "100ms"},
    })
    config = base.model_copy(update={"adapters": adapters})
    RecordingToy.outbox = config.state_dir / "outbox.db"
    assert config.outbox_url() == f"sqlite:///{RecordingToy.outbox}"
    daemon = Daemon(config, ready_grace_s=0.3, state_interval_s=0.2)
    run = asyncio.create_task(daemon.run())

    def acked(name: str) -> list[Checkpoint | None]:
        return [c for n, c, _ in RecordingToy.acks if n == name]

    try:
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            while any(len(acked(n)) < rows[n] for n in rows):
                assert not run.done(), f"the daemon stopped: {run.result()}"
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not every batch was acknowledged: {RecordingToy.acks}") from None
    finally:
        daemon.request_stop()
        code = await asyncio.wait_for(run, 60)
    assert code == 0
    assert PlainAdapter.starts == {"steady": 1, "crashy": 2}
    for name, n in rows.items():
        assert acked(name) == [{"n": i} for i in range(1, n + 1)], acked(name)
    early = [(n, c, s) for n, c, s in RecordingToy.acks if s != _json(c)]
    assert not early, f"acknowledged before the outbox held the checkpoint: {early}"
