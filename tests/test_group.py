"""Group mode on real processes: three daemons on one PostgreSQL outbox, under faults.

Real servers started by the fixtures on free ports: PostgreSQL (the outbox in one
database, a logical-replication source in another), MariaDB (an ``sql_poll`` source),
nats-server. Every member reaches the outbox through a TCP proxy of its own
(:class:`bench.soak.proxy.FaultProxy`), so the path of one member can be cut alone.
Writers change both sources all along, while the test, in order: kills -9 the owner of
the PostgreSQL adapter and restarts it; pauses (SIGSTOP) the owners of the PostgreSQL
adapter and of the relay for longer than the lease, then resumes them (they must commit
nothing, log the lost lease and rejoin); cuts the outbox path of the owner of the
PostgreSQL adapter for longer than the lease; restarts every member in turn; adds a
member that takes an adapter over, then removes it. Then, from the stream: every change
exactly once, per-key order, final state equal to the sources. The failover time of
each fault (fault -> another member holds the lease and has committed a batch of that
adapter; for the relay, the stream grows again) is printed, and bounded. Further tests:
the fence on a real PostgreSQL, group members and a single daemon refusing each other,
an outbox outage shorter than the lease.

Default group settings (lease 10s, renew every 3s): the times are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest

from bench.soak.proxy import FaultProxy
from cdc_bridge.daemon.group_plan import assign
from cdc_bridge.outbox.base import OutboxMessage
from cdc_bridge.outbox.fence import RELAY_RESOURCE, Fence, LeaseLost
from cdc_bridge.outbox.leases import LeaseDb
from cdc_bridge.outbox.postgres import PostgresStore
from tests.helpers import BridgeProcess, stream_count, stream_messages, wait_for, write_config
from tests.services.mariadb import MariaDBServer
from tests.services.nats_server import NatsServer
from tests.services.ports import free_port
from tests.services.postgres import PostgresServer
from tests.test_instance_lock import (
    bridge_config,
    insert_rows,
    make_source,
    refused,
    wait_ids,
    wait_running,
)

KEYS = 20
LEASE_S = 10.0
#: A failover must finish within this (lease + renew_every + start-up, on a busy
#: two-core machine); the measured times are printed.
FAILOVER_BOUND_S = 30.0
ADAPTERS = ("shop", "erp")
RESOURCES = (*ADAPTERS, RELAY_RESOURCE)


@dataclass
class Member:
    name: str
    proc: BridgeProcess
    proxy: FaultProxy


@dataclass
class Env:
    tmp: Path
    nats_url: str
    outbox_db: str
    outbox_dsn: str
    pg_src: str
    maria: dict[str, Any]
    pg_port: int
    members: dict[str, Member] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    inserted: list[int] = field(default_factory=list)
    failovers: dict[str, float] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    # -- members ----------------------------------------------------------------------

    def config(self, name: str, proxy: FaultProxy) -> Path:
        outbox = f"postgresql://postgres@127.0.0.1:{proxy.port}/{self.outbox_db}"
        return write_config(self.tmp / f"{name}.yaml", {
            "state_dir": str(self.tmp / f"state-{name}"),
            "nats": {"url": self.nats_url, "stream": "CDC", "subject_prefix": "cdc",
                     "ack_timeout": "3s"},
            "outbox": {"url": outbox, "poll_interval": "100ms"},
            "group": {"enabled": True, "member_id": name},
            "http": {"enabled": True, "port": self.http_port(name)},
            "adapters": [
                {"name": "shop", "type": "postgres", "dsn": self.pg_src,
                 "tables": ["public.acct"], "snapshot": "initial",
                 "heartbeat_interval": "1s", "status_interval": "1s"},
                {"name": "erp", "type": "sql_poll",
                 "url": "mysql+pymysql://root@127.0.0.1:{port}/{db}".format(**self.maria),
                 "poll_interval": "200ms",
                 "tables": [{"name": "items", "incrementing_column": "id"}]},
            ],
        })

    def http_port(self, name: str) -> int:
        if name not in self.ports:
            self.ports[name] = free_port()
        return self.ports[name]

    def start(self, name: str) -> Member:
        member = self.members.get(name)
        if member is None:
            proxy = FaultProxy(self.pg_port, name=name).start()
            proc = BridgeProcess(self.config(name, proxy), self.tmp / f"{name}.log")
            member = self.members[name] = Member(name, proc, proxy)
        member.proc.start()
        return member

    def live(self) -> set[str]:
        rows = self.query("SELECT member_id FROM cdc_bridge.members"
                          " WHERE expires_at > clock_timestamp()")
        return {r[0] for r in rows}

    def leases(self) -> dict[str, tuple[str | None, int]]:
        rows = self.query("SELECT resource, owner, epoch FROM cdc_bridge.leases"
                          " WHERE owner IS NOT NULL AND expires_at > clock_timestamp()")
        return {r[0]: (r[1], int(r[2])) for r in rows}

    def owner(self, resource: str) -> str:
        found: tuple[str, int] = wait_for(lambda: self.leases().get(resource), timeout_s=60,
                                          what=f"an owner of {resource}")
        return found[0]

    def slot_active(self, slot: str) -> bool:
        with psycopg.connect(self.pg_src, autocommit=True) as c:
            row = c.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                            (slot,)).fetchone()
        return bool(row and row[0])

    def committed_ms(self, adapter: str) -> int:
        rows = self.query("SELECT updated_ms FROM cdc_bridge.checkpoints WHERE adapter = %s",
                          (adapter,))
        return int(rows[0][0]) if rows else 0

    def query(self, text: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with psycopg.connect(self.outbox_dsn, autocommit=True, connect_timeout=5) as c:
                return c.execute(text, args).fetchall()
        except psycopg.errors.UndefinedTable:
            return []

    def settled(self, names: set[str]) -> dict[str, str]:
        """Wait until exactly ``names`` are live and every resource is held by the member
        the assignment gives it; returns resource -> owner."""
        want = assign(RESOURCES, names)

        def ok() -> bool:
            held = {r: o for r, (o, _) in self.leases().items()}
            return self.live() == names and held == want
        wait_for(ok, timeout_s=60, what=f"members {sorted(names)} settled as {want}")
        return want

    def failover(self, kind: str, resource: str, old: str, t0: float) -> float:
        """Seconds from ``t0`` until another member holds ``resource`` and (an adapter)
        has committed a batch of it."""
        def moved() -> float | None:
            held = self.leases().get(resource)
            return time.monotonic() if held is not None and held[0] != old else None

        moved_at: float = wait_for(moved, timeout_s=60, interval_s=0.1,
                                   what=f"{resource} to leave {old}")
        if resource in ADAPTERS:
            seen_ms = time.time() * 1000
            wait_for(lambda: self.committed_ms(resource) > seen_ms, timeout_s=60,
                     interval_s=0.1, what=f"{resource} to capture again")
        else:  # the relay: the stream grows again
            seen = stream_count(self.nats_url)
            wait_for(lambda: stream_count(self.nats_url) > seen, timeout_s=60,
                     interval_s=0.1, what="the relay to publish again")
        took = time.monotonic() - t0
        self.failovers[f"{kind} ({resource})"] = took
        print(f"failover {kind:<22} {resource:<6} {old} -> {self.leases()[resource][0]}: "
              f"{took:5.1f}s (lease moved after {moved_at - t0:4.1f}s)")
        return took


# -- writers ---------------------------------------------------------------------------


def pg_writer(env: Env) -> None:
    """Increments one key at a time, ~40 transactions a second."""
    with psycopg.connect(env.pg_src, autocommit=True) as conn:
        i = 0
        while not env.stop.is_set():
            conn.execute("UPDATE acct SET n = n + 1 WHERE id = %s", (i % KEYS,))
            i += 1
            time.sleep(0.025)


def maria_writer(env: Env) -> None:
    """Inserts rows one transaction each, ~25 a second."""
    conn = pymysql.connect(host="127.0.0.1", port=env.maria["port"], user="root",
                           database=env.maria["db"], autocommit=True)
    try:
        with conn.cursor() as cur:
            while not env.stop.is_set():
                cur.execute("INSERT INTO items (note) VALUES ('x')")
                env.inserted.append(int(cur.lastrowid))
                time.sleep(0.04)
    finally:
        conn.close()


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path, postgres_server: PostgresServer, mariadb_server: MariaDBServer,
        nats_server: NatsServer) -> Iterator[Env]:
    suffix = uuid.uuid4().hex[:8]
    src, outbox = f"grp_src_{suffix}", f"grp_outbox_{suffix}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {src}")
        c.execute(f"CREATE DATABASE {outbox}")
    pg_src = postgres_server.dsn_for(src)
    with psycopg.connect(pg_src, autocommit=True) as c:
        c.execute("CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL)")
        c.execute("INSERT INTO acct SELECT g, 0 FROM generate_series(0, %s) g", (KEYS - 1,))
    mdb = f"grp_{suffix}"
    admin = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="root",
                            autocommit=True)
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {mdb}")
        cur.execute(f"CREATE TABLE {mdb}.items (id int AUTO_INCREMENT PRIMARY KEY, "
                    "note varchar(20))")
    e = Env(tmp_path, nats_server.url, outbox, postgres_server.dsn_for(outbox), pg_src,
            {"port": mariadb_server.port, "db": mdb}, postgres_server.port)
    try:
        yield e
    finally:
        e.stop.set()
        for m in e.members.values():
            if m.proc.alive():
                with_cont(m)
                m.proc.kill9()
            m.proxy.close()
        with psycopg.connect(postgres_server.dsn, autocommit=True) as c:
            for slot in c.execute("SELECT slot_name FROM pg_replication_slots"
                                  " WHERE database = %s", (src,)).fetchall():
                c.execute("SELECT pg_drop_replication_slot(%s)", slot)
            c.execute(f"DROP DATABASE IF EXISTS {src} WITH (FORCE)")
            c.execute(f"DROP DATABASE IF EXISTS {outbox} WITH (FORCE)")
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {mdb}")
        admin.close()


def with_cont(member: Member) -> None:
    if member.proc.proc is not None:
        os.kill(member.proc.proc.pid, signal.SIGCONT)


# -- the test ----------------------------------------------------------------------------


def verify(env: Env) -> None:
    """Every change exactly once, in order per key, final state equal to the sources."""
    with psycopg.connect(env.pg_src) as c:
        final = dict(c.execute("SELECT id, n FROM acct").fetchall())
    expected_pg = KEYS + sum(final.values())
    expected_maria = len(env.inserted)

    def complete() -> list[Any] | None:
        stored = stream_messages(env.nats_url)
        pg = [m for m in stored if m.subject.startswith("cdc.shop.")]
        maria = [m for m in stored if m.subject.startswith("cdc.erp.")]
        return stored if len(pg) >= expected_pg and len(maria) >= expected_maria else None

    stored = wait_for(complete, timeout_s=90, interval_s=1.0, what="the stream to catch up")
    ids = [m.headers.get("Nats-Msg-Id") for m in stored]
    assert len(ids) == len(set(ids)), "a message id is in the stream twice"
    per_key: dict[int, list[int]] = {}
    for m in stored:
        if m.subject.startswith("cdc.shop."):
            after = m.body["data"]["after"]
            per_key.setdefault(after["id"], []).append(after["n"])
    for key, versions in per_key.items():
        assert versions == list(range(final[key] + 1)), (key, versions)
    assert set(per_key) == set(final)
    items = [m.body["data"]["after"]["id"] for m in stored if m.subject.startswith("cdc.erp.")]
    assert items == sorted(env.inserted), "MariaDB rows: missing, doubled or out of order"


def check_visibility(env: Env, owners: dict[str, tuple[str | None, int]]) -> None:
    """``status``, ``/status`` and ``/metrics`` show the members, owners and epochs."""
    out = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "status", "-c",
                          str(env.tmp / "m1.yaml")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "group: 3 live member(s), this daemon is m1" in out.stdout, out.stdout
    for resource, (owner, epoch) in owners.items():
        assert f"lease {resource}: {owner}, epoch {epoch}, held" in out.stdout, out.stdout
    base = f"http://127.0.0.1:{env.ports['m1']}"

    def status_seen() -> dict[str, Any] | None:
        with urllib.request.urlopen(base + "/status", timeout=5) as r:
            group: dict[str, Any] = json.loads(r.read()).get("group") or {}
        return group if len(group.get("members", [])) == 3 else None

    group = wait_for(status_seen, timeout_s=10, what="/status with three members")
    assert group["member_id"] == "m1"
    assert {x["resource"]: x["owner"] for x in group["leases"]} == \
        {r: o for r, (o, _) in owners.items()}
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert "cdc_group_members 3.0" in text
    for resource, (owner, epoch) in owners.items():
        assert f'cdc_group_lease_epoch{{resource="{resource}"}} {float(epoch)}' in text
        assert f'cdc_group_lease_owner_info{{owner="{owner}",resource="{resource}"}} 1.0' \
            in text
        assert f'cdc_group_lease_held{{resource="{resource}"}} {1.0 if owner == "m1" else 0.0}' \
            in text


def test_three_members_share_capture_and_survive_faults(env: Env) -> None:
    for name in ("m1", "m2", "m3"):
        env.start(name)
    env.settled({"m1", "m2", "m3"})
    writers = [threading.Thread(target=pg_writer, args=(env,), daemon=True),
               threading.Thread(target=maria_writer, args=(env,), daemon=True)]
    for w in writers:
        w.start()
    time.sleep(2)
    owners = env.leases()
    print("owners at start:", {r: o for r, (o, _) in owners.items()})
    assert len({o for o, _ in owners.values()}) == 3, "three resources, three members"
    check_visibility(env, owners)

    # 1. kill -9 of the owner of the PostgreSQL adapter
    victim = env.owner("shop")
    t0 = time.monotonic()
    env.members[victim].proc.kill9()
    assert env.failover("kill -9", "shop", victim, t0) < FAILOVER_BOUND_S
    env.start(victim)
    env.settled({"m1", "m2", "m3"})

    # 2. SIGSTOP, for longer than the lease, of the owners of the PostgreSQL adapter and of
    # the relay at once. The paused owner still holds the replication slot (its
    # walsender lives on): the new owner must end that session to start. The relay's
    # child process is not paused: it must stop publishing by itself when its reads are
    # refused.
    zombies = [env.members[env.owner("shop")], env.members[env.owner(RELAY_RESOURCE)]]
    wait_for(lambda: env.slot_active("cdc_bridge_shop"), timeout_s=30,
             what="the PostgreSQL adapter's owner to stream from its slot")
    assert zombies[0] is not zombies[1]
    marks = [len(z.proc.log()) for z in zombies]
    t0 = time.monotonic()
    for z in zombies:
        assert z.proc.proc is not None
        os.kill(z.proc.proc.pid, signal.SIGSTOP)
    with ThreadPoolExecutor(2) as pool:
        took = list(pool.map(lambda rz: env.failover("SIGSTOP > lease", rz[0], rz[1].name, t0),
                             zip(("shop", RELAY_RESOURCE), zombies, strict=True)))
    assert max(took) < FAILOVER_BOUND_S
    taker = env.members[env.owner("shop")]
    assert "ended the session (backend pid" in taker.proc.log(), taker.proc.log()[-3000:]
    time.sleep(max(0.0, LEASE_S + 4 - (time.monotonic() - t0)))
    for z in zombies:
        assert z.proc.proc is not None
        os.kill(z.proc.proc.pid, signal.SIGCONT)
    for z, mark in zip(zombies, marks, strict=True):
        wait_for(lambda z=z, mark=mark: "lost" in z.proc.log()[mark:], timeout_s=30,
                 what=f"{z.name}, resumed, to log its lost lease")
    env.settled({"m1", "m2", "m3"})
    assert all(z.proc.alive() for z in zombies), "a paused member must rejoin, not exit"

    # 3. the outbox path of the owner of the PostgreSQL adapter cut for longer than a lease
    cut = env.members[env.owner("shop")]
    t0 = time.monotonic()
    cut.proxy.refuse()
    assert env.failover("outbox cut > lease", "shop", cut.name, t0) < FAILOVER_BOUND_S
    time.sleep(max(0.0, LEASE_S + 4 - (time.monotonic() - t0)))
    cut.proxy.heal()
    env.settled({"m1", "m2", "m3"})
    assert cut.proc.alive(), cut.proc.log()[-3000:]

    # 4. rolling restart: each member stopped (SIGTERM) and started again in turn
    for name in ("m1", "m2", "m3"):
        member = env.members[name]
        held = [r for r, (o, _) in env.leases().items() if o == name]
        t0 = time.monotonic()
        assert member.proc.terminate() == 0, member.proc.log()[-3000:]
        for resource in held:
            env.failover("rolling restart", resource, name, t0)
        env.start(name)
        env.settled({"m1", "m2", "m3"})

    # 5. a fourth member joins under load (named so that the assignment gives it an
    # adapter: a hand-over), then leaves (the adapter is handed back)
    base = {"m1", "m2", "m3"}
    newcomer, moved = next((f"m{i}", r) for i in range(4, 100) for r in ADAPTERS
                           if assign(RESOURCES, {*base, f"m{i}"})[r] == f"m{i}")
    before = env.owner(moved)
    t0 = time.monotonic()
    env.start(newcomer)
    env.settled({*base, newcomer})
    env.failover("rebalance: join", moved, before, t0)
    t0 = time.monotonic()
    assert env.members[newcomer].proc.terminate() == 0
    env.failover("rebalance: leave", moved, newcomer, t0)
    env.settled(base)
    time.sleep(2)

    env.stop.set()
    for w in writers:
        w.join(10)
    verify(env)
    for name in ("m1", "m2", "m3"):
        assert env.members[name].proc.terminate() == 0
        text = env.members[name].proc.log()
        assert "unexpected error" not in text and "fatal" not in text, text[-3000:]
    print("failover times:", {k: round(v, 1) for k, v in env.failovers.items()})


# -- the fence itself, on a real PostgreSQL ----------------------------------------------


@pytest.fixture
def outbox_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"grp_fence_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.dsn_for(name)
    finally:
        with psycopg.connect(postgres_server.dsn, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_stale_fence_writes_nothing_and_a_takeover_waits_for_a_fenced_write(
        outbox_url: str) -> None:
    store = PostgresStore(outbox_url)
    db = LeaseDb(outbox_url, lock_timeout_ms=300)
    db.ensure()
    try:
        epoch = db.acquire("erp", "a", 1.0)
        assert epoch == 1 and db.acquire("erp", "b", 1.0) is None  # held: not taken
        old = Fence("erp", "a", 1)
        msg = OutboxMessage("id-1", "cdc.erp.t.c", b"{}")
        assert store.append("erp", [msg], {"pos": 1}, fence=old) == 1
        time.sleep(1.2)  # expired by the database clock, nobody took it yet
        with pytest.raises(LeaseLost):
            store.append("erp", [msg._replace(msg_id="id-2")], {"pos": 2}, fence=old)
        assert not db.renew(old, 10.0)
        assert db.acquire("erp", "b", 10.0) == 2
        new = Fence("erp", "b", 2)
        with pytest.raises(LeaseLost):
            store.append("erp", [msg._replace(msg_id="id-3")], {"pos": 3}, fence=old)
        assert store.stats().last_seq == 1 and store.checkpoint("erp") == {"pos": 1}
        assert store.append("erp", [msg._replace(msg_id="id-4")], {"pos": 4}, fence=new) == 2
        assert not db.release(old) and db.holds(new)

        # the relay's reads and deletes are fenced the same way
        assert db.acquire("_relay", "a", 10.0) == 1
        relay = Fence("_relay", "a", 1)
        assert [r.seq for r in store.pending(0, 10, fence=relay)] == [1, 2]
        assert db.release(relay) and db.acquire("_relay", "b", 10.0) == 2
        with pytest.raises(LeaseLost):
            store.pending(0, 10, fence=relay)
        with pytest.raises(LeaseLost):
            store.remove(2, fence=relay)
        assert store.stats().pending == 2

        # a fenced write in progress holds the lease row: a takeover waits for it, the
        # owner's renewals and its release do not
        with psycopg.connect(outbox_url) as writer:
            writer.execute("SELECT 1 FROM cdc_bridge.leases WHERE resource = 'erp'"
                           " AND owner = 'b' AND epoch = 2 FOR KEY SHARE")
            assert db.renew(new, 10.0)
            assert db.release(new)
            assert db.acquire("erp", "c", 10.0) is None
            writer.commit()
        assert db.acquire("erp", "c", 10.0) == 3

        # one member id, two live processes: the second is told
        assert db.heartbeat("m", "token-1", "h", 1, 10.0)
        assert not db.heartbeat("m", "token-2", "h", 2, 10.0)
        assert db.heartbeat("m", "token-1", "h", 1, 10.0)
    finally:
        db.close()
        store.close()


# -- group members and a daemon without group mode never share an outbox -----------------


def test_group_members_and_a_single_daemon_never_share_an_outbox(
        tmp_path: Path, nats_server: NatsServer, postgres_server: PostgresServer) -> None:
    schema = f"grp_mix_{uuid.uuid4().hex[:8]}"
    url = f"{postgres_server.dsn}?schema={schema}"
    db = tmp_path / "legacy.db"
    make_source(db)
    nats = {"url": nats_server.url}

    def config(name: str, group: bool) -> Path:
        path = bridge_config(tmp_path / f"{name}.yaml", db, tmp_path / f"state-{name}", nats,
                             url)
        if group:
            text = path.read_text() + "group: {enabled: true}\n"
            path.write_text(text)
        return path

    def refusal(running_in_group: bool) -> str:
        """Start a daemon, then one of the other kind: the second's refusal."""
        tag = "group" if running_in_group else "single"
        first = BridgeProcess(config(f"{tag}-first", running_in_group),
                              tmp_path / f"{tag}-first.log")
        first.start()
        wait_running(first)
        second = BridgeProcess(config(f"{tag}-second", not running_in_group),
                               tmp_path / f"{tag}-second.log")
        second.start()
        log = refused(second)
        assert f"is running with outbox schema {schema}" in log
        assert first.terminate() == 0
        return log

    assert "group members and a daemon without group.enabled cannot share" in refusal(False)
    assert "set group.enabled: true on every one of them" in refusal(True)


# -- the outbox database restarted under a group -------------------------------------------


def test_outbox_outage_shorter_than_the_lease_keeps_every_owner(
        tmp_path: Path, nats_server: NatsServer, fresh_postgres: PostgresServer) -> None:
    db = tmp_path / "legacy.db"
    make_source(db)
    insert_rows(db, 1, 100)
    members = []
    for name in ("a", "b"):
        path = bridge_config(tmp_path / f"{name}.yaml", db, tmp_path / f"state-{name}",
                             {"url": nats_server.url}, fresh_postgres.dsn)
        path.write_text(path.read_text() + f"group: {{enabled: true, member_id: {name}}}\n")
        member = BridgeProcess(path, tmp_path / f"{name}.log")
        member.start()
        members.append(member)

    def leases() -> dict[str, tuple[str, int]]:
        with psycopg.connect(fresh_postgres.dsn, autocommit=True) as c:
            try:
                rows = c.execute("SELECT resource, owner, epoch FROM cdc_bridge.leases"
                                 " WHERE expires_at > clock_timestamp()").fetchall()
            except psycopg.errors.UndefinedTable:
                return {}  # no member has created the tables yet
        return {r: (o, int(e)) for r, o, e in rows}

    want = assign(("erp", RELAY_RESOURCE), {"a", "b"})
    before = wait_for(lambda: (held := leases()) and {r: o for r, (o, _) in held.items()}
                      == want and held, timeout_s=60, what=f"owners {want}")
    wait_ids(nats_server.url, 100)
    fresh_postgres.stop()  # down for about 5 s: less than what is left of any lease
    time.sleep(4)
    fresh_postgres.start()
    insert_rows(db, 101, 200)
    assert wait_ids(nats_server.url, 200) == list(range(1, 201))
    assert leases() == before, "a short outbox outage must not move any lease"
    assert any("group: round failed" in m.log() for m in members), "no round met the outage"
    for m in members:
        assert m.terminate() == 0, m.log()[-3000:]
