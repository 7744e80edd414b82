"""What the soak reads from JetStream: probe counts while running, the whole stream at the end.

Both open a fresh connection straight to nats-server (never through the proxy) for each
call, so they work across the nats-server restarts the soak itself causes: a call made
while the server is down just returns ``None``/raises and is retried by the caller.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.js import api

from bench.soak.verify import Delivered, delivered_change


@dataclass(slots=True)
class Message:
    seq: int
    subject: str
    headers: dict[str, str]
    body: dict[str, Any]


async def read_all(url: str, stream: str) -> list[Message]:
    """Every message of ``stream`` in order, read until its last sequence number."""
    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        last = info.state.last_seq
        out: list[Message] = []
        if not info.state.messages:
            return out
        sub = await js.pull_subscribe(">", stream=stream, config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL,
            inactive_threshold=60.0))
        idle = 0
        while idle < 5:
            try:
                msgs = await sub.fetch(2000, timeout=2.0)
            except TimeoutError:  # nats-py raises both its own and asyncio's
                idle += 1
                continue
            for m in msgs:
                try:
                    body = orjson.loads(m.data)
                except orjson.JSONDecodeError:
                    body = {"_raw": m.data[:200].decode("utf-8", "replace")}
                if not isinstance(body, dict):
                    body = {"_raw": str(body)[:200]}
                seq = m.metadata.sequence.stream
                out.append(Message(seq, m.subject, dict(m.headers or {}), body))
                if seq >= last:
                    idle = 5
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def _count(url: str, stream: str, subject: str) -> int | None:
    try:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0,
                                allow_reconnect=False)
    except (OSError, TimeoutError, nats.errors.Error):
        return None
    try:
        info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    except (TimeoutError, nats.errors.Error, nats.js.errors.Error):
        return None
    finally:
        await nc.close()


def count_messages(url: str, stream: str, subject: str) -> int | None:
    """Messages in ``stream`` on ``subject`` (wildcards allowed); None if unreachable."""
    return asyncio.run(_count(url, stream, subject))


@dataclass(slots=True)
class StreamContents:
    """The stream, split by ``(adapter, table)``; dead letters and strays kept apart."""

    changes: dict[tuple[str, str], list[Delivered]] = field(default_factory=dict)
    dead_letters: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    #: Schema-change events (``<prefix>._schema.>``, docs/schemas.md) by subject.
    schema_events: dict[str, int] = field(default_factory=dict)
    total: int = 0


async def _dead_letters(url: str, stream: str) -> list[Message]:
    """The dead-letter stream ``<stream>_DLQ`` (``<prefix>_dlq.>``), empty if none yet."""
    try:
        return await read_all(url, f"{stream}_DLQ")
    except nats.js.errors.NotFoundError:
        return []


def read_contents(url: str, stream: str, prefix: str) -> StreamContents:
    msgs = asyncio.run(read_all(url, stream))
    out = StreamContents(total=len(msgs))
    for m in asyncio.run(_dead_letters(url, stream)):
        out.dead_letters.append((m.subject, m.headers))
    legacy = f"{prefix}._dlq."  # where dead letters were before their own stream
    schemas = f"{prefix}._schema."
    for m in msgs:
        if m.subject.startswith(schemas):
            out.schema_events[m.subject] = out.schema_events.get(m.subject, 0) + 1
            continue
        if m.subject.startswith(legacy):
            out.dead_letters.append((m.subject, m.headers))
            continue
        d = delivered_change(m.seq, m.body)
        src: Any = (m.body.get("data") or {}).get("source") or {}
        if d is None or not isinstance(src, dict):
            out.strays.append(m.subject)
            continue
        out.changes.setdefault((str(src.get("adapter")), str(src.get("table"))), []).append(d)
    return out
