"""Test helpers: run the bridge as a real process, read back what the stream holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import orjson
import yaml
from nats.aio.msg import Msg
from nats.js import api


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _read_outbox(outbox_db: Path, query: str, *args: Any) -> Any:
    """One row of a read-only query on a bridge's SQLite outbox (None if not there yet)."""
    if not outbox_db.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{outbox_db}?mode=ro", uri=True,
                                            timeout=5)) as conn:
        try:
            return conn.execute(query, args).fetchone()
        except sqlite3.OperationalError:  # schema not created yet
            return None


def committed_checkpoint(outbox_db: Path, adapter: str) -> dict[str, Any] | None:
    """The checkpoint of ``adapter`` as committed in the outbox, as the daemon stored it.

    Fault tests time their kills on this rather than on the stream: capture runs well
    ahead of the relay, so the stream lags behind what has been captured.
    """
    row = _read_outbox(outbox_db, "SELECT value FROM checkpoints WHERE adapter=?", adapter)
    return None if row is None else dict(json.loads(row[0]))


def appended_events(outbox_db: Path) -> int:
    """How many events were ever appended to a SQLite outbox (published ones included)."""
    row = _read_outbox(outbox_db, "SELECT seq FROM sqlite_sequence WHERE name='outbox'")
    return 0 if row is None else int(row[0])


#: Every bridge process started by a test; tests/conftest.py kills leftovers after each
#: test, so a failing assertion never leaves a daemon running.
STARTED: list[BridgeProcess] = []


class BridgeProcess:
    """``cdc-bridge run -c FILE`` as a child process (so tests can kill -9 it)."""

    def __init__(self, config_path: Path, log_path: Path, env: dict[str, str] | None = None):
        self.config_path = config_path
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cdc_bridge.cli", "run", "-c", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        STARTED.append(self)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class StoredMessage:
    seq: int
    subject: str
    headers: dict[str, str]
    body: dict[str, Any]


def is_schema_event(subject: str) -> bool:
    """A schema-change event (``<prefix>._schema.>``, docs/schemas.md)."""
    parts = subject.split(".", 2)
    return len(parts) > 1 and parts[1] == "_schema"


async def read_raw(url: str, stream: str = "CDC", subject: str = ">",
                   schemas: bool = False, **connect: Any) -> list[Msg]:
    """Every message in ``stream`` (matching ``subject``), in stream order, as nats-py
    delivers them; ``connect``: nats-py options (credentials). The one stream reader of
    the tests: done only when the consumer has nothing left to deliver, so a fetch that
    comes back empty (a slow server, a busy machine) is not taken as the end.

    Schema-change events are left out unless ``schemas`` (or ``subject`` names them):
    most tests are about the rows."""
    msgs = await _read_all(url, stream, subject, **connect)
    if schemas or "_schema" in subject:
        return msgs
    return [m for m in msgs if not is_schema_event(m.subject)]


async def _read_all(url: str, stream: str, subject: str, **connect: Any) -> list[Msg]:
    nc = await nats.connect(url, **connect)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        out: list[Msg] = []
        if info.state.messages == 0:
            return out
        async def subscribe() -> Any:
            return await js.pull_subscribe(subject, stream=stream, config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL))

        sub = await subscribe()
        deadline = time.monotonic() + 120
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=2.0)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            except nats.js.errors.ServiceUnavailableError:
                # a cluster just through a leader election: what this fetch had gathered is
                # lost with the error, so the read starts over on a new consumer
                await asyncio.sleep(0.5)
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await sub.unsubscribe()
                out, sub = [], await subscribe()
                continue
            out.extend(msgs)
            if len(msgs) < 1000:
                if (await sub.consumer_info()).num_pending == 0:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"reading stream {stream} did not finish in 120s")
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


def _decoded(m: Msg) -> StoredMessage:
    body: dict[str, Any]
    try:
        body = orjson.loads(m.data)
    except orjson.JSONDecodeError:
        body = {"_raw": m.data.decode("utf-8", "replace")}
    return StoredMessage(m.metadata.sequence.stream, m.subject, dict(m.headers or {}), body)


async def read_stream(url: str, stream: str = "CDC", subject: str = ">",
                      schemas: bool = False) -> list[StoredMessage]:
    """Every message in ``stream`` (matching ``subject``), in stream order, JSON decoded
    (schema-change events only with ``schemas``)."""
    return [_decoded(m) for m in await read_raw(url, stream, subject, schemas)]


def stream_messages(url: str, stream: str = "CDC", subject: str = ">",
                    schemas: bool = False) -> list[StoredMessage]:
    return asyncio.run(read_stream(url, stream, subject, schemas))


async def count_messages(js: Any, stream: str = "CDC", schemas: bool = False) -> int:
    """How many messages ``stream`` holds (schema-change events only with ``schemas``)."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0
    total = int(info.state.messages)
    if schemas or not total:
        return total
    per = await js.stream_info(stream, subjects_filter="*._schema.>")
    return total - sum((per.state.subjects or {}).values())


def stream_count(url: str, stream: str = "CDC", schemas: bool = False) -> int:
    """How many messages ``stream`` holds now (0 before it exists): stream info only;
    schema-change events are not counted unless ``schemas``."""
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return await count_messages(nc.jetstream(), stream, schemas)
        finally:
            await nc.close()

    return asyncio.run(count())


def wait_for(predicate: Any, timeout_s: float = 60.0, interval_s: float = 0.2,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def add_rows(db: Path, count: int) -> None:
    """Append ``count`` rows to the SQLite table ``invoices`` (id, amount), creating it."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS invoices (id INTEGER PRIMARY KEY, amount TEXT)")
        start = conn.execute("SELECT COALESCE(MAX(id), 0) FROM invoices").fetchone()[0]
        conn.executemany("INSERT INTO invoices VALUES (?, ?)",
                         [(i, f"{i}.50") for i in range(start + 1, start + count + 1)])
