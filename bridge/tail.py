"""``cdc-bridge tail``: print events from JetStream as they arrive.

Uses an ordered, ephemeral push consumer (no state left on the server) filtered on the
given subject; by default it replays from the start of the stream, ``--new`` only shows
what arrives from now on. Pretty output is one line per event
(``subject op key -> after``); ``--raw`` prints bodies unchanged, one per line, for
scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.js import api

from bridge.errors import FatalError


@dataclass(frozen=True, slots=True)
class TailOptions:
    servers: list[str]
    stream: str
    subject: str
    only_new: bool = False
    raw: bool = False
    count: int = 0
    idle_exit_s: float = 0.0


def format_event(subject: str, body: bytes) -> str:
    """One readable line for a CloudEvent body (or the body as text if it is not one)."""
    try:
        ce = orjson.loads(body)
        data = ce["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return f"{subject} {body[:200].decode('utf-8', 'replace')}"
    op = data.get("op", "?")
    key = orjson.dumps(data.get("key")).decode()
    image = data.get("after") if op != "d" else data.get("before")
    return f"{subject} op={op} key={key} {orjson.dumps(image).decode()}"


async def tail_events(opts: TailOptions) -> None:
    try:
        nc = await nats.connect(servers=opts.servers, connect_timeout=5,
                                max_reconnect_attempts=-1)
    except (TimeoutError, OSError, nats.errors.Error) as e:
        raise FatalError(f"cannot connect to NATS at {', '.join(opts.servers)}") from e
    js = nc.jetstream()
    seen = 0
    done = asyncio.Event()
    last = asyncio.get_running_loop().time()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        nonlocal seen, last
        if done.is_set():
            return
        last = asyncio.get_running_loop().time()
        if opts.raw:
            sys.stdout.write(msg.data.decode("utf-8", "replace") + "\n")
        else:
            sys.stdout.write(format_event(msg.subject, msg.data) + "\n")
        sys.stdout.flush()
        seen += 1
        if opts.count and seen >= opts.count:
            done.set()

    policy = api.DeliverPolicy.NEW if opts.only_new else api.DeliverPolicy.ALL
    try:
        sub = await js.subscribe(opts.subject, stream=opts.stream, cb=on_msg,
                                 ordered_consumer=True, deliver_policy=policy)
    except nats.js.errors.NotFoundError as e:
        await nc.close()
        raise FatalError(f"stream {opts.stream} not found (is the bridge running?)") from e
    try:
        while not done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), 0.5)
            if opts.idle_exit_s and asyncio.get_running_loop().time() - last > opts.idle_exit_s:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await nc.close()
