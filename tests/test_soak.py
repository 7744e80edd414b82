"""The fault-injection soak (bench/soak), short: its checker, its proxy, and one real run.

- The verifier must flag every kind of failure (loss, duplicate, reorder, phantom,
  final-state mismatch) on hand-made histories, and on a real stream read back.
- The proxy really forwards, cuts, refuses and delays TCP connections.
- A ~75 s soak with a fixed seed runs every available source type against real
  servers with faults of every kind (the table faults of postgres included: a
  re-created table, a table taken out of the publication), and fails on any loss,
  duplicate or reorder; a ~30 s one restores an old state_dir (postgres).
  The long version is ``python -m bench.soak --duration 600 --seed 7``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.js import api

from bench.soak.driver import Soak, SoakOptions, available_sources
from bench.soak.proxy import FaultProxy
from bench.soak.stream import read_contents
from bench.soak.table import render
from bench.soak.verify import Delivered, ResetWindow, verify_table
from bench.soak.workload import AppendLog, Change, KeySpace
from cdc_bridge.kernel.events import ChangeEvent
from tests.services.nats_server import NatsServer

# -- the verifier ----------------------------------------------------------------------


def _history() -> dict[int, list[Change]]:
    return {1: [Change("c", 1, 1), Change("u", 1, 2), Change("d", 1, 2), Change("c", 1, 3)],
            2: [Change("c", 2, 1), Change("u", 2, 2)]}


def _deliver(*items: tuple[str, int, int | None]) -> list[Delivered]:
    return [Delivered(i, f"id-{op}-{k}-{v}", op, k, v) for i, (op, k, v) in enumerate(items)]


FULL = [("c", 1, 1), ("c", 2, 1), ("u", 1, 2), ("u", 2, 2), ("d", 1, 2), ("c", 1, 3)]
FINAL = {1: 3, 2: 2}


def test_verifier_accepts_the_exact_history() -> None:
    res = verify_table("t", "exact", _history(), _deliver(*FULL), FINAL)
    assert res.ok, res.examples
    assert (res.written, res.delivered) == (6, 6)


def test_verifier_counts_a_lost_change() -> None:
    items = [x for x in FULL if x != ("u", 1, 2)]
    res = verify_table("t", "exact", _history(), _deliver(*items), FINAL)
    assert res.lost == 1 and not res.ok


def test_verifier_counts_a_lost_tail_and_the_final_mismatch() -> None:
    res = verify_table("t", "exact", _history(), _deliver(*FULL[:-1]), FINAL)
    assert res.lost == 1 and res.final_mismatch == 1


def test_verifier_counts_duplicates_by_state_and_by_event_id() -> None:
    dup_state = [*FULL[:3], ("u", 1, 2), *FULL[3:]]
    delivered = _deliver(*dup_state)
    res = verify_table("t", "exact", _history(), delivered, FINAL)
    assert res.duplicated == 1 and res.lost == 0
    same_id = _deliver(*FULL)
    same_id.append(Delivered(99, same_id[0].event_id, "c", 1, 1))
    res = verify_table("t", "exact", _history(), same_id, FINAL)
    assert res.duplicated == 1


def test_verifier_counts_reordering() -> None:
    items = [("c", 1, 1), ("c", 2, 1), ("d", 1, 2), ("u", 1, 2), ("u", 2, 2), ("c", 1, 3)]
    res = verify_table("t", "exact", _history(), _deliver(*items), FINAL)
    assert res.out_of_order == 1 and not res.ok


def test_verifier_counts_changes_never_written() -> None:
    res = verify_table("t", "exact", _history(), _deliver(*FULL, ("u", 2, 7)), FINAL)
    assert res.unexpected == 1


def test_state_mode_allows_collapsed_states_but_not_a_wrong_end() -> None:
    collapsed = [("c", 2, 1), ("u", 2, 2), ("c", 1, 3)]  # key 1's first life never polled
    res = verify_table("t", "state", _history(), _deliver(*collapsed), FINAL)
    assert res.ok and res.collapsed == 3
    res = verify_table("t", "state", _history(), _deliver(("c", 1, 3), ("c", 2, 1)), FINAL)
    assert res.lost == 1 and res.final_mismatch == 1


def test_verifier_catches_a_writer_model_that_differs_from_the_source() -> None:
    res = verify_table("t", "exact", _history(), _deliver(*FULL), {1: 3, 2: 1})
    assert res.final_mismatch == 1


# a table reset (t): key 1 written c1 u2 | window: u3 d3 | after: c4; key 2: c1 | u2 | -
RESET_HISTORY = {1: [Change("c", 1, 1), Change("u", 1, 2), Change("u", 1, 3),
                     Change("d", 1, 3), Change("c", 1, 4)],
                 2: [Change("c", 2, 1), Change("u", 2, 2)],
                 3: [Change("c", 3, 1), Change("d", 3, 1)]}
WINDOW = ResetWindow("recreate:table", lo={1: 2, 2: 1, 3: 1}, hi={1: 4, 2: 2, 3: 2})


def _with_t(*items: tuple[str, int | None, int | None]) -> list[Delivered]:
    return [Delivered(i, f"id-{i}", op, k, v) for i, (op, k, v) in enumerate(items)]


RESET_OK = [("c", 1, 1), ("c", 2, 1), ("c", 3, 1), ("u", 1, 2), ("t", None, None),
            ("r", 2, 2), ("c", 1, 4), ("r", 1, 4)]


def test_verifier_folds_a_table_reset() -> None:
    """Changes inside the window are collapsed into the re-snapshot; a key deleted in it
    needs no d; an r may repeat the live change just before it."""
    res = verify_table("t", "exact", RESET_HISTORY, _with_t(*RESET_OK), {1: 4, 2: 2},
                       [WINDOW])
    assert res.ok, res.examples
    assert res.collapsed == 3  # key 1: u3 d3; key 3: d1 (key 2: its r reads u2)


def test_verifier_counts_a_change_missing_before_the_reset() -> None:
    items = [x for x in RESET_OK if x != ("u", 1, 2)]
    res = verify_table("t", "exact", RESET_HISTORY, _with_t(*items), {1: 4, 2: 2}, [WINDOW])
    assert res.lost == 1, res.examples


def test_verifier_counts_a_change_after_the_window_skipped() -> None:
    history = {**RESET_HISTORY, 1: [*RESET_HISTORY[1], Change("u", 1, 5)]}
    items = [*RESET_OK[:6], ("u", 1, 5)]  # c4 (after the window) never came
    res = verify_table("t", "exact", history, _with_t(*items), {1: 5, 2: 2}, [WINDOW])
    assert res.lost == 1 and res.collapsed == 3, res.examples


def test_verifier_counts_a_second_r_and_a_missing_r() -> None:
    res = verify_table("t", "exact", RESET_HISTORY, _with_t(*RESET_OK, ("r", 1, 4)),
                       {1: 4, 2: 2}, [WINDOW])
    assert res.duplicated == 1, res.examples
    items = [x for x in RESET_OK if x != ("r", 2, 2)]
    res = verify_table("t", "exact", RESET_HISTORY, _with_t(*items), {1: 4, 2: 2}, [WINDOW])
    assert res.final_mismatch == 1 and not res.ok


def test_verifier_keeps_a_window_open_until_the_key_is_delivered_again() -> None:
    """A key deleted inside one reset's window and untouched until the next reset."""
    history = {1: [Change("c", 1, 1), Change("d", 1, 1)]}
    windows = [ResetWindow("alter:publication", {1: 1}, {1: 2}),
               ResetWindow("alter:publication", {1: 2}, {1: 2})]
    items = [("c", 1, 1), ("t", None, None), ("t", None, None)]
    res = verify_table("t", "exact", history, _with_t(*items), {}, windows)
    assert res.ok and res.collapsed == 1, res.examples


def test_verifier_counts_a_t_it_did_not_cause() -> None:
    res = verify_table("t", "exact", RESET_HISTORY, _with_t(*RESET_OK), {1: 4, 2: 2})
    assert res.unexpected == 1 and not res.ok


def test_keyspace_history_replays_to_its_state() -> None:
    space = KeySpace(random.Random(3), n_keys=20, delete_ratio=0.3)
    for _ in range(300):
        space.commit(space.propose(4))
    for key, changes in space.history.items():
        versions = [c.v for c in changes if c.op != "d"]
        assert versions == sorted(set(versions))
        state = None if changes[-1].op == "d" else changes[-1].v
        assert space.state.get(key) == state
    log = AppendLog()
    log.commit(log.propose(3))
    log.commit(log.propose(2))
    assert log.written == [1, 2, 3, 4, 5]


def test_verifier_reads_a_real_stream(tmp_path: Path, nats_server: NatsServer) -> None:
    """Publish changes with a duplicate (new msg id) and a reordering; both are found."""

    def ev(op: str, key: int, v: int, pos: str) -> ChangeEvent:
        row = {"id": key, "v": v}
        return ChangeEvent(adapter="a", table="t", op=op, position=pos, key={"id": key},  # type: ignore[arg-type]
                           before=row if op == "d" else None, after=None if op == "d" else row)

    events = [ev("c", 1, 1, "1"), ev("u", 1, 2, "2"), ev("u", 1, 2, "2b"),  # duplicate
              ev("c", 2, 1, "3"), ev("d", 2, 2, "5"), ev("u", 2, 2, "4")]  # reordered

    async def publish() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(api.StreamConfig(name="CDC", subjects=["cdc.>"]))
        for e in events:
            await js.publish(e.subject("cdc"), e.encode(), headers={"Nats-Msg-Id": e.id})
        await nc.close()

    asyncio.run(publish())
    contents = read_contents(nats_server.url, "CDC", "cdc")
    assert contents.total == 6
    history = {1: [Change("c", 1, 1), Change("u", 1, 2)],
               2: [Change("c", 2, 1), Change("u", 2, 2), Change("d", 2, 2)]}
    res = verify_table("t", "exact", history, contents.changes[("a", "t")], {1: 2})
    assert res.duplicated == 1
    assert res.out_of_order == 1
    assert res.lost == 1  # the update, seen as skipped when the delete arrived first


# -- the proxy -------------------------------------------------------------------------


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    import threading

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, port


def _echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):  # the proxy's cuts reset us too
        while data := conn.recv(65536):
            conn.sendall(data)


def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def _fails(call: Callable[[], bytes], expected: bytes) -> bool:
    try:
        return call() != expected
    except OSError:
        return True


def test_proxy_forwards_cuts_refuses_and_delays() -> None:
    srv, port = _echo_server()
    try:
        with FaultProxy(port) as proxy:
            big = bytes(range(256)) * 4000
            assert _roundtrip(proxy.port, big) == big
            held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            held.sendall(b"x")
            assert held.recv(1) == b"x"
            assert proxy.cut() == 1

            def send_and_read() -> bytes:
                held.sendall(b"y")
                return held.recv(1)

            assert _fails(send_and_read, b"y")
            held.close()
            proxy.refuse()
            assert _fails(lambda: _roundtrip(proxy.port), b"ping")
            proxy.heal()
            assert _roundtrip(proxy.port) == b"ping"
            proxy.delay(0.3)
            start = time.monotonic()
            assert _roundtrip(proxy.port) == b"ping"
            assert time.monotonic() - start >= 0.55  # both directions delayed
            proxy.heal()
            assert proxy.stats.refused >= 1 and proxy.stats.cut >= 1
    finally:
        srv.close()


# -- the short soak ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_short_soak_every_fault_kind_no_loss_duplicate_or_reorder(tmp_path: Path) -> None:
    if not available_sources(("postgres", "sql_poll", "files")):
        pytest.fail("no source type is registered")
    opts = SoakOptions(duration_s=75.0, seed=20261126, n_keys=60, rate=15.0,
                       gap_s=(0.3, 1.2), recovery_timeout_s=60.0, settle_timeout_s=45.0,
                       workdir=tmp_path / "soak")
    result = Soak(opts).run()
    table = render(result)
    print(table)
    assert result.ok, table
    kinds = {f.kind.split(":")[0] for f in result.faults}
    assert {"kill9", "restart", "cut", "refuse", "delay"} <= kinds, table
    if "postgres" in result.sources:
        assert {"recreate:table", "alter:publication"} <= {f.kind for f in result.faults}, table
    assert sum(t.written for t in result.tables) > 500, table


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_short_soak_restored_state_dir_publishes_nothing_twice(tmp_path: Path) -> None:
    """``restore:state_dir`` (postgres, whose position survives a restore): the restored
    outbox's rows, published longer than the duplicate window before, are found in the
    stream by the relay's exact reconcile, so nothing is lost or duplicated."""
    if not available_sources(("postgres",)):
        pytest.skip("the postgres source is not registered")
    opts = SoakOptions(duration_s=5.0, seed=20261127, sources=("postgres",),
                       kinds=("restore:state_dir",), n_keys=60, rate=15.0, gap_s=(0.3, 0.6),
                       recovery_timeout_s=60.0, settle_timeout_s=30.0,
                       duplicate_window_s=16.0, workdir=tmp_path / "soak")
    result = Soak(opts).run()
    table = render(result)
    print(table)
    assert result.ok, table
    assert [f.kind for f in result.faults] == ["restore:state_dir"], table
    assert any("restored outbox held" in n and "held 0 " not in n for n in result.notes), table
