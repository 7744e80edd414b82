"""Support for the sql_poll tests (no tests here): per-test source databases on the three
real backends, and a driver that runs the adapter in-process like the daemon does
(commit = keep the batch's checkpoint), so tests can restart it from any checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from cdc_bridge.adapters.contract import ChangeBatch
from cdc_bridge.adapters.registry import AdapterContext
from cdc_bridge.adapters.sql_poll import SqlPollConfig
from cdc_bridge.adapters.sql_poll.adapter import SqlPollAdapter
from cdc_bridge.kernel.events import ChangeEvent

BACKENDS = ["sqlite", "mariadb", "postgres"]


@dataclass
class SourceDb:
    backend: str
    url: str
    engine: sa.Engine

    def exec(self, *statements: Any) -> None:
        with self.engine.begin() as conn:
            for st in statements:
                conn.execute(st)


def ts_type() -> Any:
    """A microsecond timestamp column type on every backend."""
    return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


@pytest.fixture(params=BACKENDS)
def source_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SourceDb]:
    name = "t_" + uuid.uuid4().hex[:12]
    backend = request.param
    admin: sa.Engine | None = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'source.db'}"
    elif backend == "mariadb":
        server = request.getfixturevalue("mariadb_server")
        admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        url = server.url.rsplit("/", 1)[0] + f"/{name}"
    else:
        server = request.getfixturevalue("postgres_server")
        admin = sa.create_engine(server.dsn.replace("postgresql://", "postgresql+psycopg://"),
                                 isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        url = server.dsn_for(name).replace("postgresql://", "postgresql+psycopg://")
    engine = sa.create_engine(url)
    try:
        yield SourceDb(backend, url, engine)
    finally:
        engine.dispose()
        if admin is not None:
            with admin.connect() as c, contextlib.suppress(Exception):
                c.execute(sa.text(f"DROP DATABASE {name}"))
            admin.dispose()


def adapter_config(url: str, tables: list[dict[str, Any]], **extra: Any) -> SqlPollConfig:
    raw = {"name": "erp", "type": "sql_poll", "url": url, "poll_interval": "50ms",
           "tables": tables, **extra}
    return SqlPollConfig.model_validate(raw)


@dataclass
class Run:
    """What one in-process adapter run produced."""

    events: list[ChangeEvent] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None
    batches: list[ChangeBatch] = field(default_factory=list)


async def run_adapter(config: SqlPollConfig, state_dir: Path, checkpoint: dict[str, Any] | None,
                      until: Callable[[Run], bool], timeout_s: float = 30.0,
                      settle_s: float = 0.3, max_batches: int | None = None) -> Run:
    """Iterate the adapter until ``until(run)`` holds (then ``settle_s`` more) or
    ``max_batches`` batches were taken (a crash before the next commit)."""
    adapter = SqlPollAdapter(config, AdapterContext(state_dir=state_dir))
    run = Run(checkpoint=checkpoint)
    gen: AsyncIterator[ChangeBatch] = adapter.changes(checkpoint)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    settle_at: float | None = None
    pending: asyncio.Future[ChangeBatch] | None = None
    try:
        while True:
            if max_batches is not None and len(run.batches) >= max_batches:
                break
            now = loop.time()
            if settle_at is None and until(run):
                settle_at = now + settle_s
            if settle_at is not None and now >= settle_at:
                break
            if now > deadline:
                raise AssertionError(f"timed out; {len(run.events)} events so far")
            if pending is None:
                pending = asyncio.ensure_future(gen.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=(settle_at or deadline) - now)
            if not done:
                continue
            batch = pending.result()
            pending = None
            run.batches.append(batch)
            run.events.extend(batch.events)
            run.checkpoint = batch.checkpoint
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        with contextlib.suppress(BaseException):
            await gen.aclose()  # type: ignore[attr-defined]
        await adapter.close()
    return run


def after_ids(events: list[ChangeEvent], col: str = "id") -> list[Any]:
    return [(e.after or e.before or {}).get(col) for e in events]


def ops_by_id(events: list[ChangeEvent], col: str = "id") -> list[tuple[Any, str]]:
    return [((e.after or e.before or {}).get(col), e.op) for e in events]


def decode(event: ChangeEvent) -> dict[str, Any]:
    """The event as a subscriber gets it (wire JSON, parsed)."""
    import orjson

    parsed: dict[str, Any] = orjson.loads(event.encode())
    return parsed
