"""The bad-input round: fuzzed configs, and hostile values end to end through a real bridge.

Config loader (``cdc_bridge.config.parse_config``), fuzzed with hypothesis: arbitrary text,
YAML-ish token soup, arbitrary nested structures, and valid configs of every adapter
type with random mutations at random paths. The only allowed outcomes are a
``BridgeConfig`` or a ``ConfigError`` whose every line names where the problem is;
secrets interpolated from the environment never appear in the messages.

End to end (real ``cdc-bridge run`` process, real nats-server): rows bigger than NATS
``max_payload`` are dead-lettered with their reason while the rest flows; NUL bytes
arrive intact; invalid UTF-8 and odd identifiers (spaces, dots, quotes, unicode, ``*``,
``>``) either arrive with sanitised subjects or are reported, never silently dropped.

The pgoutput decoder and the file parsers are fuzzed by their authors beside their own
code: see ``tests/fast/test_pgoutput.py`` and ``tests/fast/test_files_formats.py``.
"""

from __future__ import annotations

import copy
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc_bridge.config import BridgeConfig, parse_config
from cdc_bridge.kernel.errors import ConfigError
from cdc_bridge.kernel.events import subject_token
from tests.helpers import BridgeProcess, StoredMessage, stream_messages, wait_for, write_config
from tests.services.nats_server import NatsServer

# -- config loader fuzzing -------------------------------------------------------------

VALID: dict[str, Any] = {
    "state_dir": "/tmp/cdc-fuzz",
    "nats": {"url": "nats://127.0.0.1:1", "stream": "CDC", "subject_prefix": "cdc",
             "password": "${FUZZ_SECRET}"},
    "outbox": {"relay_batch": 100},
    "adapters": [
        {"name": "erp", "type": "sql_poll", "url": "sqlite:///x.db", "poll_interval": "1s",
         "tables": [{"name": "t", "mode": "incrementing", "incrementing_column": "id"}]},
        {"name": "shop", "type": "postgres", "dsn": "postgresql://u@h/db",
         "tables": ["public.t", {"name": "public.u"}]},
        {"name": "drop", "type": "files", "path": "/tmp/d", "pattern": "*.csv",
         "format": "csv", "mode": "drop", "csv": {"delimiter": ";"}},
    ],
}
SECRET = "s3cr3t-Value-42"
ENV = {"FUZZ_SECRET": SECRET, "X": "x"}

scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.sampled_from(["${FUZZ_SECRET}", "${NOPE}", "$${X}",
                                                      "1s", "-5ms", "sql_poll", "files"]))
junk = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=8) | st.integers(), kids, max_size=4),
                    max_leaves=12)
yaml_tokens = st.lists(st.sampled_from([
    "adapters:", "- ", "name: ", "type: ", "sql_poll", "postgres", "files", "nats:", "url: ",
    "tables:", "{", "}", "[", "]", ":", ",", "\n", "  ", "${X}", "${X:-d}", "$${", "&a ",
    "*a", "!!python/object:os.system", "<<: *a", "'", '"', "\t", "---", "...", "? ",
    "%TAG ! x", "!", "\x00", "\ufeff", "é", "1e999", "0x1F", ".nan", "~", "|\n  x",
]), max_size=40).map("".join)


def _check(text: str) -> None:
    try:
        cfg = parse_config(text, "fuzz.yaml", env=ENV)
    except ConfigError as e:
        assert e.errors, "ConfigError without any message"
        for line in e.errors:
            assert isinstance(line, str) and ": " in line, f"no path in {line!r}"
            assert SECRET not in line, "secret leaked into an error message"
        return
    assert isinstance(cfg, BridgeConfig)


FUZZ = settings(max_examples=250, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_gives_a_config_or_a_config_error(text: str) -> None:
    _check(text)


@FUZZ
@given(yaml_tokens)
def test_yaml_token_soup_gives_a_config_or_a_config_error(text: str) -> None:
    _check(text)


@FUZZ
@given(junk)
def test_arbitrary_structures_give_a_config_or_a_config_error(tree: Any) -> None:
    _check(yaml.safe_dump(tree, allow_unicode=True))


def _mutate(tree: Any, data: st.DataObject) -> Any:
    """Replace, add or delete something at a random depth of ``tree``."""
    if isinstance(tree, dict) and tree and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(tree, key=str)))
        tree[key] = _mutate(tree[key], data)
        return tree
    if isinstance(tree, list) and tree and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(tree) - 1))
        tree[i] = _mutate(tree[i], data)
        return tree
    action = data.draw(st.sampled_from(["replace", "add", "delete"]))
    if action == "add" and isinstance(tree, dict):
        tree[data.draw(st.text(max_size=10))] = data.draw(junk)
        return tree
    if action == "delete" and isinstance(tree, dict) and tree:
        tree.pop(data.draw(st.sampled_from(sorted(tree, key=str))))
        return tree
    return data.draw(junk)


@FUZZ
@given(st.data())
def test_mutated_valid_configs_give_a_config_or_a_config_error(data: st.DataObject) -> None:
    tree = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        tree = _mutate(tree, data)
    _check(yaml.safe_dump(tree, allow_unicode=True))


def test_the_fuzz_base_config_is_valid_and_its_secret_redacted() -> None:
    cfg = parse_config(yaml.safe_dump(VALID), env=ENV)
    assert {a.type for a in cfg.adapter_configs} == {"sql_poll", "postgres", "files"}
    assert SECRET in cfg.secrets


@pytest.mark.parametrize(("path", "value", "where"), [
    (("nats", "subject_prefix"), "cdc.*", "nats.subject_prefix"),
    (("nats", "subject_prefix"), "cdc.>", "nats.subject_prefix"),
    (("adapters", 0, "name"), "er.p>", "adapters[0].name"),
    (("adapters", 1, "name"), "sh op*", "adapters[1].name"),
])
def test_wildcards_in_prefix_and_names_are_refused_with_their_path(
        tmp_path: Path, path: tuple[Any, ...], value: str, where: str) -> None:
    bad = copy.deepcopy(VALID)
    node: Any = bad
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    cfg = write_config(tmp_path / "bad.yaml", bad)
    res = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "run", "-c", str(cfg)],
                         capture_output=True, text=True, timeout=60, env={**ENV, "PATH": ""})
    assert res.returncode == 2, res.stderr
    assert where in res.stderr
    assert SECRET not in res.stderr + res.stdout


# -- end to end: hostile values through a real bridge ---------------------------------

HUGE = 2 * 1024 * 1024  # twice nats-server's default max_payload


def _bridge(tmp: Path, nats_url: str, adapter: dict[str, Any],
            **nats: Any) -> BridgeProcess:
    cfg = write_config(tmp / "bridge.yaml", {
        "state_dir": str(tmp / "state"),
        "nats": {"url": nats_url, "stream": "CDC", "subject_prefix": "cdc",
                 "ack_timeout": "5s", **nats},
        "adapters": [adapter],
    })
    return BridgeProcess(cfg, tmp / "bridge.log")


def _changes(msgs: list[StoredMessage]) -> list[StoredMessage]:
    return [m for m in msgs if not m.subject.startswith("cdc_dlq.")]


def _dead(msgs: list[StoredMessage]) -> list[StoredMessage]:
    return [m for m in msgs if m.subject.startswith("cdc_dlq.")]


def _events_and_dead(url: str) -> list[StoredMessage]:
    """The stream's messages, then its dead letters (their own stream, CDC_DLQ)."""
    return stream_messages(url) + stream_messages(url, "CDC_DLQ")


ODD_SQLITE_TABLE = 'we "ird" tâble *>'


def test_sql_poll_huge_row_flows_by_claim_check_nul_bytes_and_odd_names_flow(
        tmp_path: Path, nats_server: NatsServer) -> None:
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.execute(f'CREATE TABLE "{ODD_SQLITE_TABLE.replace(chr(34), chr(34) * 2)}" '
                     "(id INTEGER PRIMARY KEY, note TEXT)")
        rows = [(i, f"row {i}") for i in range(1, 11)]
        rows[3] = (4, "nul\x00inside\x00")
        rows[5] = (6, "x" * HUGE)
        conn.executemany(f'INSERT INTO "{ODD_SQLITE_TABLE.replace(chr(34), chr(34) * 2)}" '
                         "VALUES (?, ?)", rows)
    bridge = _bridge(tmp_path, nats_server.url, {
        "name": "hostile", "type": "sql_poll", "url": f"sqlite:///{db}",
        "poll_interval": "100ms",
        "tables": [{"name": ODD_SQLITE_TABLE, "mode": "incrementing",
                    "incrementing_column": "id"}]})
    bridge.start()
    try:
        msgs = wait_for(lambda: (m := _events_and_dead(nats_server.url)) and len(m) >= 10 and m,
                        what="10 events, the huge one by claim check", timeout_s=60)
        assert bridge.alive(), bridge.log()
    finally:
        bridge.terminate()
    changes, dead = _changes(msgs), _dead(msgs)
    # the huge row's place holds its claim-check reference (key, no row image)
    ids = [m.body["data"]["key"]["id"] for m in changes]
    assert ids == list(range(1, 11)), "every row, the huge one included, in order"
    claim = changes[5]
    assert int(claim.headers["Cdc-Claim-Size"]) > HUGE and "after" not in claim.body["data"]
    assert claim.headers["Cdc-Claim-Bucket"] == "CDC_CLAIMS"
    op = changes[0].body["data"]["op"]  # "c", or "r" if rows present at start are a snapshot
    assert op in ("c", "r")
    expected_subject = f"cdc.hostile._.{subject_token(ODD_SQLITE_TABLE)}.{op}"
    assert re.fullmatch(r"[A-Za-z0-9_.-]+", expected_subject)
    assert {m.subject for m in changes} == {expected_subject}
    assert changes[0].body["data"]["source"]["table"] == ODD_SQLITE_TABLE
    assert changes[3].body["data"]["after"]["note"] == "nul\x00inside\x00"
    assert dead == []


def test_sql_poll_invalid_utf8_is_reported_and_later_rows_flow(
        tmp_path: Path, nats_server: NatsServer) -> None:
    """A TEXT value that is not UTF-8 must not stop the table: its row is dead-lettered."""
    db = tmp_path / "legacy.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, qty INTEGER)")
        conn.execute("INSERT INTO t VALUES (1, 'ok', 10)")
        conn.execute("INSERT INTO t VALUES (2, CAST(X'66FF6FC328' AS TEXT), 20)")
        conn.execute("INSERT INTO t VALUES (3, 'after', 30)")
    bridge = _bridge(tmp_path, nats_server.url, {
        "name": "utf", "type": "sql_poll", "url": f"sqlite:///{db}", "poll_interval": "100ms",
        "tables": [{"name": "t", "mode": "incrementing", "incrementing_column": "id"}]})
    bridge.start()
    try:
        msgs = wait_for(lambda: (m := _events_and_dead(nats_server.url)) and len(m) >= 3 and m,
                        what="3 messages (events or dead letters)", timeout_s=60)
        with sqlite3.connect(db) as conn:  # a row written after the bad one, while running
            conn.execute("INSERT INTO t VALUES (4, 'later', 40)")
        msgs = wait_for(lambda: (m := _events_and_dead(nats_server.url)) and len(m) >= 4 and m,
                        what="row 4 after the bad row", timeout_s=60)
        assert bridge.alive(), bridge.log()[-2000:]
    except AssertionError:
        msgs = _events_and_dead(nats_server.url)
        log = bridge.log()
        bridge.terminate()
        pytest.fail(f"row 2 (invalid UTF-8) stalled table t: {len(msgs)} message(s) in the "
                    f"stream; bridge log tail:\n{log[-1500:]}")
    bridge.terminate()
    ids = [m.body["data"]["after"]["id"] for m in _changes(msgs)]
    assert sorted(ids) == [1, 3, 4]
    dead = _dead(msgs)
    assert len(dead) == 1 and dead[0].subject == "cdc_dlq.utf"
    hdrs = dead[0].headers
    assert "decode" in hdrs["Cdc-Reason"] and "UTF-8" in hdrs["Cdc-Reason"], hdrs
    assert hdrs["Cdc-Table"] == "t" and hdrs["Cdc-Key"] == '{"id":2}', hdrs
    assert hdrs["Cdc-Column"] == "note" and hdrs["Cdc-Position"] == "t:2", hdrs
    body = dead[0].body
    assert body["key"] == {"id": 2} and body["columns"] == ["note"]
    assert body["row"] == {"id": 2, "qty": 20}  # what could be read is kept


# PostgreSQL identifiers that are legal when quoted, and awkward everywhere else.
ODD_PG_TABLES = ["we ird", "dot.ted", 'quo"te', "ünï✓", "star*", "gt>", "Mixed Case"]


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_postgres_odd_identifiers_get_sanitised_subjects_and_huge_rows_dead_letters(
        tmp_path: Path, nats_server: NatsServer, postgres_server: Any) -> None:
    """Snapshot and streaming both: odd names sanitised in subjects, kept in the body."""
    import psycopg

    dbname = re.sub(r"[^a-z0-9_]", "_", f"hostile_{tmp_path.name[-16:].lower()}")
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    dsn = postgres_server.dsn_for(dbname)
    schema = "odd schema*"
    qs = _pg_ident(schema)

    def insert(conn: Any, base: int) -> None:
        for i, name in enumerate(ODD_PG_TABLES, start=base):
            conn.execute(f"INSERT INTO {qs}.{_pg_ident(name)} VALUES (%s, %s, %s)",
                         (i, f"row of {name}", bytes([0, 255, 254, i % 256])))
        first = _pg_ident(ODD_PG_TABLES[0])
        conn.execute(f"INSERT INTO {qs}.{first} VALUES (%s, %s, NULL)", (base + 50, "y" * HUGE))
        conn.execute(f"INSERT INTO {qs}.{first} VALUES (%s, %s, NULL)", (base + 51, "after"))

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {qs}")
        for name in ODD_PG_TABLES:
            conn.execute(f"CREATE TABLE {qs}.{_pg_ident(name)} "
                         "(id int PRIMARY KEY, note text, raw bytea)")
        insert(conn, 100)  # read by the initial snapshot
    bridge = _bridge(tmp_path, nats_server.url, {
        "name": "pghostile", "type": "postgres", "dsn": dsn, "snapshot": "initial",
        "tables": [f"{schema}.{n}" for n in ODD_PG_TABLES]},
        claim_checks={"enabled": False})  # (claim checks: test_claim_checks.py)
    per_round = len(ODD_PG_TABLES) + 2
    bridge.start()
    try:
        wait_for(lambda: len(_events_and_dead(nats_server.url)) >= per_round,
                 what="the snapshot", timeout_s=60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            insert(conn, 200)  # streamed through pgoutput
        msgs = wait_for(lambda: (m := _events_and_dead(nats_server.url))
                        and len(m) >= 2 * per_round and m, what="the stream", timeout_s=60)
        assert bridge.alive(), bridge.log()[-2000:]
    finally:
        bridge.terminate()
    changes, dead = _changes(msgs), _dead(msgs)
    assert len(changes) == 2 * (len(ODD_PG_TABLES) + 1), [m.subject for m in changes]
    for base, op in ((100, "r"), (200, "c")):
        got = {m.body["data"]["source"]["table"]: m for m in changes
               if base <= m.body["data"]["after"]["id"] < base + 50}
        assert sorted(got) == sorted(ODD_PG_TABLES), f"one event per odd table ({op})"
        for name, m in got.items():
            assert m.subject == (f"cdc.pghostile.{subject_token(schema)}."
                                 f"{subject_token(name)}.{op}")
            assert m.body["data"]["source"]["schema"] == schema
            assert m.body["data"]["after"]["note"] == f"row of {name}"
        assert base + 51 in {m.body["data"]["after"]["id"] for m in changes}
    assert len(dead) == 2, [d.headers for d in dead]
    for d in dead:
        reason = d.headers.get("Cdc-Reason", "")
        assert "max_payload" in reason or "exceed" in reason.lower(), d.headers
        assert d.headers["Cdc-Table"] == ODD_PG_TABLES[0] and d.headers["Cdc-Adapter"] == \
            "pghostile", d.headers


def test_files_invalid_utf8_and_nul_bytes_are_reported_not_dropped(
        tmp_path: Path, nats_server: NatsServer) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    lines = [b"id,note", b"1,good", b"2,bad \xff\xfe utf8", b"3,nul \x00 inside",
             b'4,"unterminated', b"5,good again"]
    part = drop / ".export.part"
    part.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[5] + b"\n" + lines[4] + b"\n")
    part.rename(drop / "export.csv")
    bridge = _bridge(tmp_path, nats_server.url, {
        "name": "fhostile", "type": "files", "path": str(drop), "pattern": "*.csv",
        "format": "csv", "mode": "drop", "key": ["id"], "types": {"id": "int"},
        "poll_interval": "100ms", "stable_for": "0s"})
    bridge.start()
    try:
        msgs = wait_for(lambda: (m := _events_and_dead(nats_server.url)) and len(m) >= 5 and m,
                        what="5 messages (events or dead letters)", timeout_s=30)
        assert bridge.alive(), bridge.log()[-2000:]
    finally:
        bridge.terminate()
    changes, dead = _changes(msgs), _dead(msgs)
    ids = [m.body["data"]["after"]["id"] for m in changes]
    assert 1 in ids and 5 in ids, "good rows around bad ones must flow"
    assert len(changes) + len(dead) == 5, "every data row is an event or a dead letter"
    for d in dead:
        assert d.headers.get("Cdc-Reason"), d.headers
    if 3 in ids:  # accepted: the NUL must survive intact
        nul = next(m for m in changes if m.body["data"]["after"]["id"] == 3)
        assert nul.body["data"]["after"]["note"] == "nul \x00 inside"
