"""The soak driver: real servers, proxies, the bridge, writers, seeded faults, verification.

Sequence: start nats-server and each source's server (on free ports, in temp dirs),
put a :class:`~bench.soak.proxy.FaultProxy` in front of each, create the tables, start
the bridge (as a real ``cdc-bridge run`` process) with its ``state_dir`` on a small
tmpfs when one can be mounted (for ``diskfull:outbox``) and a short duplicate window
(``duplicate_window_s``: a downtime longer than it, ``restore:state_dir`` makes one,
leaves only the relay's exact reconcile to prevent duplicates), wait for a first probe of every
source, start the writers, then inject one fault after another at seeded times until
the duration is over. After each fault is healed the driver writes a probe to every
source and times how long until all probes are in the stream (recovery time).

At the end writers stop, a last probe drains the pipeline, and the verifier compares
the whole stream with the writers' models and the sources' final contents, retrying
for a while so pollers can converge. The bridge must then stop cleanly (exit 0).
Every resource is released in ``finally``, whatever failed.
"""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.soak.faults import (
    Ballast,
    Fault,
    NatsBlock,
    bridge_fault,
    cluster_block,
    cluster_faults,
    disk_fault,
    proxy_block,
    proxy_faults,
    reset_fault,
    restore_fault,
    schedule,
    server_fault,
)
from bench.soak.group import Members, member_settings
from bench.soak.proxy import FaultProxy
from bench.soak.sources import MariaSource, PostgresSource, Source
from bench.soak.stream import count_messages, read_contents
from bench.soak.verify import TableResult, verify_table
from tests.helpers import BridgeProcess, write_config

log = logging.getLogger("soak")
ALL_SOURCES = ("postgres", "sql_poll", "files", "mysql_binlog")
PREFIX, STREAM = "cdc", "CDC"


@dataclass(slots=True)
class SoakOptions:
    duration_s: float = 600.0
    seed: int = 7
    sources: tuple[str, ...] = ALL_SOURCES
    kinds: tuple[str, ...] | None = None  # prefixes of fault kinds to keep (None: all)
    n_keys: int = 200
    rate: float = 20.0  # transactions per second per writer
    gap_s: tuple[float, float] = (1.0, 6.0)
    recovery_timeout_s: float = 120.0
    settle_timeout_s: float = 90.0
    disk_fault: bool = True
    #: A local three-node JetStream cluster (deploy/nats/nats-cluster.conf) and an R3
    #: stream, with cluster faults, instead of one nats-server behind a proxy.
    cluster: bool = False
    #: The stream's duplicate window (the least the relay's settings allow is
    #: 2 x (ack_timeout 3 s + retry_max 5 s)); ``restore:state_dir`` waits longer.
    duplicate_window_s: float = 20.0
    workdir: Path | None = None
    keep_workdir: bool = False
    #: Group mode (bench/soak/group.py): this many bridges on one PostgreSQL outbox, with
    #: member faults instead of ``kill9:bridge``, ``diskfull`` and ``restore``. 0: one.
    group: int = 0


@dataclass(slots=True)
class FaultRecord:
    kind: str
    at_s: float
    hold_s: float
    recovery_s: float | None


@dataclass(slots=True)
class SoakResult:
    seed: int
    duration_s: float = 0.0
    sources: list[str] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    tables: list[TableResult] = field(default_factory=list)
    dead_letters: int = 0
    strays: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    final_exit_code: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (all(t.ok for t in self.tables) and bool(self.tables) and not self.dead_letters
                and not self.strays and all(f.recovery_s is not None for f in self.faults)
                and not self.unexpected_exits and self.final_exit_code == 0)


def log_summary(text: str, limit: int = 6) -> list[str]:
    """Counts of the bridge's WARNING/ERROR lines and its distinct ERROR messages."""
    warnings = errors = 0
    distinct: dict[str, int] = {}
    for line in text.splitlines():
        if " WARNING " in line:
            warnings += 1
        elif " ERROR " in line:
            errors += 1
            msg = line.split(" ERROR ", 1)[1].strip()[:160]
            distinct[msg] = distinct.get(msg, 0) + 1
    out = [f"bridge log: {warnings} WARNING and {errors} ERROR lines"]
    out += [f"bridge ERROR x{n}: {m}" for m, n in list(distinct.items())[:limit]]
    return out


def _coin(rng: random.Random) -> Callable[[], bool]:
    """Heads or tails from its own seeded RNG (kill -9 or clean stop of a server)."""
    return lambda: rng.random() < 0.5


def available_sources(wanted: tuple[str, ...]) -> list[str]:
    from cdc_bridge.adapters.registry import REGISTRY

    return [s for s in wanted if s in REGISTRY]


class _ClusterUrl:
    """What the driver reads the stream through in ``--cluster`` mode: a running node's
    URL with the bridge user's credentials."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    @property
    def url(self) -> str:
        node = next((n for n in self.cluster.nodes if n.running), self.cluster.nodes[0])
        return str(self.cluster.url_of(node))


class Soak:
    def __init__(self, opts: SoakOptions) -> None:
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.result = SoakResult(opts.seed)
        self.stack = ExitStack()
        self.sources: list[Source] = []
        self.faults: list[Fault] = []
        self.bridge: BridgeProcess | None = None
        self.members: Members | None = None
        self.expect_down = False
        self.disk_grace_until = 0.0
        self.t0 = time.monotonic()

    # -- set-up -----------------------------------------------------------------------

    def _workdir(self) -> Path:
        if self.opts.workdir is not None:
            self.opts.workdir.mkdir(parents=True, exist_ok=True)
            return self.opts.workdir
        path = Path(tempfile.mkdtemp(prefix="cdc-soak-"))
        if not self.opts.keep_workdir:
            self.stack.callback(shutil.rmtree, path, True)
        return path

    def _state_dir(self, work: Path) -> tuple[Path, bool]:
        """A 256 MiB tmpfs for the outbox when we may mount one, else a plain folder."""
        state = work / "state"
        state.mkdir(exist_ok=True)
        if not self.opts.disk_fault or self.opts.group:
            return state, False
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,mode=0700", "tmpfs",
                              str(state)], capture_output=True, text=True)
        if res.returncode != 0:
            self.result.notes.append("diskfull:outbox skipped: cannot mount a tmpfs "
                                     f"({res.stderr.strip() or res.returncode})")
            return state, False
        self.stack.callback(subprocess.run, ["umount", "-l", str(state)], capture_output=True)
        return state, True

    def _start_nats(self, work: Path) -> None:
        self.cluster: Any = None
        self.nats: Any
        if self.opts.cluster:
            from tests.services.nats_cluster import NatsCluster

            self.cluster = NatsCluster(work / "cluster")
            self.stack.callback(self.cluster.stop)
            self.cluster.start()
            self.nats = _ClusterUrl(self.cluster)
        else:
            from tests.services.nats_server import NatsServer

            self.nats = NatsServer(work / "nats")
            self.nats.start()
            self.stack.callback(self.nats.stop)

    def _start_servers(self, work: Path) -> FaultProxy:
        self._start_nats(work)
        port = self.cluster.nodes[0].port if self.cluster is not None else self.nats.port
        nats_proxy = self.stack.enter_context(FaultProxy(port, name="nats"))
        wanted = available_sources(self.opts.sources)
        skipped = sorted(set(self.opts.sources) - set(wanted))
        if skipped:
            self.result.notes.append(f"sources not available yet, skipped: {', '.join(skipped)}")
        for kind in wanted:
            src = self._source(kind)
            self.sources.append(src)
            self.result.sources.append(kind)
        return nats_proxy

    def _source(self, kind: str) -> Source:
        rng = random.Random(self.rng.random())
        n, rate = self.opts.n_keys, self.opts.rate
        server: Any
        if kind == "postgres":
            from tests.services.postgres import PostgresServer

            server = PostgresServer()
            server.start()
            self.stack.callback(server.destroy)
            proxy = self.stack.enter_context(FaultProxy(server.port, name="postgres"))
            src: Source = PostgresSource(server, proxy, rng, n_keys=n, rate=rate)
        elif kind == "files":
            from bench.soak.sources_files import FilesSource

            src = FilesSource(self.work / "files", rng, n_keys=n, rate=rate)
        elif kind == "mysql_binlog":
            from bench.soak.sources_binlog import BinlogSource
            from tests.services.mariadb import MariaDBServer

            server = MariaDBServer(binlog=True)
            server.start()
            self.stack.callback(server.destroy)
            proxy = self.stack.enter_context(FaultProxy(server.port, name="mariadb_binlog"))
            src = BinlogSource(server, proxy, rng, n_keys=n, rate=rate)
        else:
            from tests.services.mariadb import MariaDBServer

            server = MariaDBServer()
            server.start()
            self.stack.callback(server.destroy)
            proxy = self.stack.enter_context(FaultProxy(server.port, name="mariadb"))
            src = MariaSource(server, proxy, rng, n_keys=n, rate=rate)
        src.setup()
        return src

    def _config(self, work: Path, state: Path, nats_proxy: FaultProxy, name: str = "bridge",
                extra: dict[str, Any] | None = None) -> Path:
        adapters = [a for s in self.sources for a in s.adapter_configs()]
        nats: dict[str, Any] = {"url": f"nats://127.0.0.1:{nats_proxy.port}"}
        if self.cluster is not None:  # every node's URL, 3 replicas
            nats = self.cluster.nats_config()
        return write_config(work / f"{name}.yaml", {
            "state_dir": str(state),
            "nats": {**nats, "stream": STREAM,
                     "subject_prefix": PREFIX, "ack_timeout": "3s", "connect_timeout": "2s",
                     "duplicate_window": f"{self.opts.duplicate_window_s:g}s"},
            "outbox": {"poll_interval": "200ms"},
            "adapters": adapters,
            **(extra or {}),
        })

    def _start_members(self, work: Path, state: Path, nats_proxy: FaultProxy) -> Members:
        """Group mode: the outbox's own PostgreSQL, a proxy per member, the members."""
        from tests.services.postgres import PostgresServer

        server = PostgresServer()
        server.start()
        self.stack.callback(server.destroy)
        n = self.opts.group
        proxies = [self.stack.enter_context(FaultProxy(server.port, name=f"outbox-b{i}"))
                   for i in range(n)]
        configs = [self._config(work, state, nats_proxy, f"bridge-b{i}",
                                member_settings(i, proxies[i].port, work)) for i in range(n)]
        members = Members(configs, [work / f"bridge-b{i}.log" for i in range(n)], proxies,
                          random.Random(self.rng.random()))
        self.stack.callback(members.kill)
        members.start()
        return members

    def _build_faults(self, nats_proxy: FaultProxy, state: Path, disk: bool) -> None:
        faults = self.members.faults() if self.members is not None else []
        if self.bridge is not None:
            faults.append(bridge_fault(self.bridge))
        block: NatsBlock
        if self.cluster is not None:
            faults += cluster_faults(self.cluster, STREAM)
            block = cluster_block(self.cluster, STREAM)
        else:
            faults += [server_fault("nats", self.nats, []), *proxy_faults("nats", nats_proxy)]
            block = proxy_block(nats_proxy)
        for src in self.sources:
            coin = _coin(random.Random(self.rng.random()))
            if src.server is not None:
                faults.append(server_fault(src.kind, src.server, src.writers, hard=coin))
            if src.proxy is not None:
                faults += proxy_faults(src.kind, src.proxy)
            if isinstance(src, PostgresSource):
                faults += self._table_faults(src)
        if disk:
            faults.append(disk_fault(Ballast(state), block))
        unsafe = [s.kind for s in self.sources if not s.restore_safe]
        if not unsafe and self.bridge is not None:
            faults.append(restore_fault(self.bridge, state, self.work / "state-backup", block,
                                        lambda: self._probe_all(self.opts.recovery_timeout_s)
                                        is not None, self.opts.duplicate_window_s,
                                        self.result.notes.append))
        if self.opts.kinds:
            faults = [f for f in faults if f.kind.startswith(self.opts.kinds)]
            if unsafe and any("restore:state_dir".startswith(k) for k in self.opts.kinds):
                self.result.notes.append(
                    "restore:state_dir skipped: these sources re-read from a restored "
                    f"checkpoint ({', '.join(unsafe)}); run it with --sources postgres")
        self.faults = faults

    def _table_faults(self, src: PostgresSource) -> list[Fault]:
        """``recreate:table`` and ``alter:publication`` on ``soak_items``."""
        subject = f"{PREFIX}.{src.adapter}.*.soak_items.t"

        def t_count() -> int | None:
            return count_messages(self.nats.url, STREAM, subject)

        return [reset_fault(kind, ddl, src.lengths, t_count, src.resets.append)
                for kind, ddl in (("recreate:table", src.recreate),
                                  ("alter:publication", src.unpublish))]

    # -- running ----------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def _check_bridge(self) -> None:
        """Restart the bridge if it died on its own (and remember that it did)."""
        if self.members is not None:
            self.members.check(lambda text: self.result.unexpected_exits.append(
                f"{self.elapsed():.0f}s: {text}"))
            return
        assert self.bridge is not None
        if not self.bridge.alive() and not self.expect_down:
            code = self.bridge.proc.returncode if self.bridge.proc else None
            if time.monotonic() < self.disk_grace_until:
                self.result.notes.append(f"diskfull: bridge exited (code {code}) "
                                         f"at {self.elapsed():.0f}s; restarted")
            else:
                self.result.unexpected_exits.append(f"{self.elapsed():.0f}s: exit code {code}")
            log.warning("bridge exited on its own (code %s); restarting", code)
            self.bridge.start()

    def _probe_all(self, timeout_s: float) -> float | None:
        """Write a probe to every source; seconds until all are in the stream, or None."""
        start = time.monotonic()
        wanted = {src.adapter: src.write_probe() for src in self.sources}
        deadline = start + timeout_s
        pending = dict(wanted)
        while pending:
            for src in self.sources:
                if src.adapter in pending:
                    n = count_messages(self.nats.url, STREAM, src.probe_subject(PREFIX))
                    if n is not None and n >= pending[src.adapter]:
                        del pending[src.adapter]
            if not pending:
                break
            if time.monotonic() > deadline:
                log.error("probes not delivered within %.0fs: %s", timeout_s, sorted(pending))
                return None
            self._check_bridge()
            time.sleep(0.1)
        return time.monotonic() - start

    def _inject(self, fault: Fault) -> None:
        hold = fault.hold(self.rng)
        at = self.elapsed()
        log.info("[%6.1fs] inject %s (hold %.1fs)", at, fault.kind, hold)
        self.expect_down = fault.kind in ("kill9:bridge", "diskfull:outbox",
                                          "restore:state_dir")
        fault.inject()
        time.sleep(hold)
        fault.heal()
        if fault.kind == "diskfull:outbox":
            self.disk_grace_until = time.monotonic() + 5.0
        self.expect_down = False
        recovery = self._probe_all(self.opts.recovery_timeout_s)
        log.info("[%6.1fs] %s healed; recovered in %s", self.elapsed(), fault.kind,
                 f"{recovery:.2f}s" if recovery is not None else "NEVER")
        self.result.faults.append(FaultRecord(fault.kind, at, hold, recovery))

    def _verify(self) -> list[TableResult]:
        contents = read_contents(self.nats.url, STREAM, PREFIX)
        self.result.dead_letters = len(contents.dead_letters)
        self.result.strays = len(contents.strays)
        return [verify_table(t.label, t.mode, t.history(),
                             contents.changes.get((t.adapter, t.table), []), t.final(),
                             t.resets() if t.resets is not None else ())
                for s in self.sources for t in s.tables]

    def _settle(self) -> None:
        deadline = time.monotonic() + self.opts.settle_timeout_s
        while True:
            self.result.tables = self._verify()
            if all(t.ok for t in self.result.tables) or time.monotonic() > deadline:
                return
            time.sleep(3.0)

    def run(self) -> SoakResult:
        with self.stack:
            work = self.work = self._workdir()
            state, disk = self._state_dir(work)
            nats_proxy = self._start_servers(work)
            if not self.sources:
                self.result.notes.append("no source available: nothing to soak")
                return self.result
            self._start_bridges(work, state, nats_proxy)
            self._build_faults(nats_proxy, state, disk)
            log.info("soak seed=%d sources=%s faults=%s work=%s", self.opts.seed,
                     ",".join(self.result.sources), ",".join(f.kind for f in self.faults), work)
            if self._probe_all(self.opts.recovery_timeout_s) is None:
                self.result.notes.append("the bridge never delivered the first probes")
                return self.result
            self.t0 = time.monotonic()
            for src in self.sources:
                for w in src.writers:
                    w.start()
            draw = schedule(self.rng, [f.kind for f in self.faults])
            by_kind = {f.kind: f for f in self.faults}
            while self.faults and self.elapsed() < self.opts.duration_s:
                time.sleep(self.rng.uniform(*self.opts.gap_s))
                self._check_bridge()
                self._inject(by_kind[draw()])
            for src in self.sources:
                for w in src.writers:
                    w.stop()
            self.result.duration_s = self.elapsed()
            if self._probe_all(self.opts.recovery_timeout_s) is None:
                self.result.notes.append("final probes never arrived")
            self._settle()
            self._stop_cleanly()
            if self.opts.keep_workdir or self.opts.workdir is not None:
                self.result.notes.append(f"work dir (kept): {work}")
        return self.result

    def _start_bridges(self, work: Path, state: Path, nats_proxy: FaultProxy) -> None:
        if self.opts.group:
            self.members = self._start_members(work, state, nats_proxy)
        else:
            config = self._config(work, state, nats_proxy)
            self.bridge = BridgeProcess(config, work / "bridge.log")
            self.bridge.start()
        self.stack.callback(self._stop_bridge)

    def _stop_cleanly(self) -> None:
        """SIGTERM the bridge (every member); its exit code and log summary."""
        if self.members is not None:
            self.result.final_exit_code = self.members.terminate(60)
            text = self.members.logs()
        else:
            assert self.bridge is not None
            self.result.final_exit_code = self.bridge.terminate(60)
            text = self.bridge.log()
        self.result.notes.extend(log_summary(text))
        if self.result.final_exit_code != 0:
            self.result.notes.append("bridge log tail:\n" + text[-3000:])

    def _stop_bridge(self) -> None:
        if self.bridge is not None and self.bridge.alive():
            self.bridge.kill9()
        for src in self.sources:
            for w in src.writers:
                w.stop()
