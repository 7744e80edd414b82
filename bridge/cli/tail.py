"""``cdc-bridge tail``: print events from JetStream as they arrive.

Uses an ordered, ephemeral push consumer (no state left on the server) filtered on the
given subject; by default it replays from the start of the stream, ``--new`` only shows
what arrives from now on, ``--count N`` stops after N events. Pretty output is one line
per event (``seq time subject op key image``, the op coloured on a terminal); ``--raw``
prints bodies unchanged, one per line, for scripts (``jq``); ``--headers`` adds the
message headers. Connection options (auth, TLS) come from the config when one is given.

Large events (claim-check references, README "Large events"): the pretty line shows the
event's op and key and, instead of its row image, where its body is (``[claim check
BUCKET/OBJECT (N bytes)]``); ``--raw`` prints the whole event, fetched from the bucket
(the reference itself, with a note on stderr, if the object is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from cdc_bridge.client.claims import ClaimError, ClaimRef, ClaimResolver
from cdc_bridge.kernel.backoff import Retry, retrying
from cdc_bridge.kernel.errors import FatalError
from cdc_bridge.kernel.schemas import SCHEMA_EVENT_TYPE


@dataclass(frozen=True, slots=True)
class TailOptions:
    servers: list[str]
    stream: str
    subject: str
    only_new: bool = False
    raw: bool = False
    count: int = 0
    idle_exit_s: float = 0.0
    headers: bool = False
    color: bool = False
    connect: dict[str, Any] = field(default_factory=dict)
    #: Give up when NATS is not reachable within this many seconds (``None``: wait).
    wait_s: float | None = 5.0


log = logging.getLogger("cdc_bridge.tail")

_OP_COLOURS = {"c": "32", "u": "33", "d": "31", "r": "36", "t": "35"}


def format_event(subject: str, body: bytes, seq: int | None = None,
                 headers: dict[str, str] | None = None, color: bool = False,
                 claim: ClaimRef | None = None) -> str:
    """One readable line for a CloudEvent body (or the body as text if it is not one);
    for a claim-check reference (``claim``), where its body is instead of the image."""
    lead = f"#{seq} " if seq is not None else ""
    extra = ""
    if headers:
        extra = " " + " ".join(f"{k}={v}" for k, v in sorted(headers.items()))
    try:
        ce = orjson.loads(body)
        data = ce["data"]
        op = str(data.get("op", "?"))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return f"{lead}{subject} {body[:200].decode('utf-8', 'replace')}{extra}"
    if ce.get("type") == SCHEMA_EVENT_TYPE:
        return f"{lead}{subject} {_schema_line(data)}{extra}"
    key = orjson.dumps(data.get("key")).decode()
    image = data.get("after") if op != "d" else data.get("before")
    when = f"{ce['time']} " if isinstance(ce.get("time"), str) else ""
    shown = f"\x1b[{_OP_COLOURS[op]}mop={op}\x1b[0m" if color and op in _OP_COLOURS else f"op={op}"
    what = f"[claim check {claim}]" if claim is not None else orjson.dumps(image).decode()
    return f"{lead}{when}{subject} {shown} key={key} {what}{extra}"


def _schema_line(data: dict[str, Any]) -> str:
    """A schema-change event in one line: versions, verdict, what changed."""
    old = data.get("old_version")
    head = (f"schema v{data.get('new_version')} (new table)" if old is None else
            f"schema v{old} -> v{data.get('new_version')} {data.get('verdict')}")
    diff = data.get("diff") or {}
    parts = [f"+{c.get('name')}" for c in diff.get("added") or [] if old is not None]
    parts += [f"-{c.get('name')}" for c in diff.get("removed") or []]
    parts += [f"~{p['to'].get('name')}" for p in diff.get("retyped") or []]
    parts += [f"{p['from'].get('name')}>{p['to'].get('name')}"
              for p in diff.get("renamed") or []]
    return head + (f" [{' '.join(parts)}]" if parts else "")


def _claim_of(msg: Msg) -> ClaimRef | None:
    try:
        return ClaimRef.of(msg.headers)
    except ClaimError:
        return None


async def _quiet(_: Exception) -> None:
    return None


async def _connect(opts: TailOptions) -> NATS:
    """Connect, waiting (with one notice) while NATS is not up yet, e.g. the bridge starting.

    Attempts are spaced by the shared back-off (:mod:`cdc_bridge.kernel.backoff`, 0.5 s
    doubling to 5 s) for ``opts.wait_s`` seconds (the config's ``connect_timeout``), then
    tail ends with a clear error; ``--wait`` keeps trying until Ctrl-C. An error other
    than "not reachable" (authentication, TLS) ends tail at once. The connection does
    not reconnect by itself: when the server goes away, tail ends.
    """
    # One pass over the servers per call, then NoServersError: with
    # max_reconnect_attempts=0, nats-py's connect() would itself retry a refused
    # connection forever (every reconnect_time_wait), silently and off our back-off.
    kwargs = {**opts.connect, "servers": opts.servers, "connect_timeout": 5,
              "allow_reconnect": False, "max_reconnect_attempts": 1,
              "reconnect_time_wait": 0, "error_cb": _quiet}
    where = ", ".join(opts.servers)

    def notice_once(retry: Retry) -> None:  # instead of a log line per attempt
        if retry.attempt == 1:
            until = "Ctrl-C to stop" if opts.wait_s is None else f"for up to {opts.wait_s:g}s"
            sys.stderr.write(f"waiting for NATS at {where} "
                             f"({type(retry.error).__name__}); {until}\n")

    unreachable = (TimeoutError, OSError, nats.errors.NoServersError)
    connecting = retrying("connect to NATS", log, on_retry=notice_once, initial_s=0.5,
                          max_s=5.0, retry_on=unreachable, deadline_s=opts.wait_s)
    try:
        return await connecting(nats.connect, **kwargs)
    except unreachable as e:
        raise FatalError(f"NATS at {where} is not reachable ({type(e).__name__}) after "
                         f"{opts.wait_s:g}s: is it running? (--wait keeps trying)") from e
    except nats.errors.Error as e:
        raise FatalError(f"cannot connect to NATS at {where}: {type(e).__name__}") from e


async def tail_events(opts: TailOptions) -> None:
    nc = await _connect(opts)
    js = nc.jetstream()
    resolver = ClaimResolver(js)
    seen = 0
    done = asyncio.Event()
    last = asyncio.get_running_loop().time()

    async def on_msg(msg: Msg) -> None:
        nonlocal seen, last
        if done.is_set():
            return
        last = asyncio.get_running_loop().time()
        hdrs = dict(msg.headers or {}) if opts.headers else None
        claim = _claim_of(msg)
        if opts.raw:
            body = msg.data
            if claim is not None:
                try:
                    body = await resolver.fetch(claim)
                except (ClaimError, TimeoutError, nats.errors.Error) as e:
                    sys.stderr.write(f"event {claim.name}: printing its reference: {e}\n")
            line = body.decode("utf-8", "replace")
            if hdrs:
                meta = orjson.dumps({"subject": msg.subject, "headers": hdrs}).decode()
                line = meta + "\t" + line
            sys.stdout.write(line + "\n")
        else:
            seq = msg.metadata.sequence.stream if msg.reply else None
            sys.stdout.write(format_event(msg.subject, msg.data, seq, hdrs, opts.color, claim)
                             + "\n")
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
            if nc.is_closed or not nc.is_connected:
                sys.stderr.write("NATS connection closed; tail stops\n")
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await nc.close()
