"""``cdc-bridge dlq list|show|redrive|migrate``: inspect and redrive dead letters.

Dead letters live in their own stream, ``<STREAM>_DLQ``, on ``<prefix>_dlq.>``:
``<prefix>_dlq.<adapter>`` for the bridge's (a source's unparsable input, a message the
stream refused) and ``<prefix>_dlq._consumer.<durable>`` for downstream consumers'
(:mod:`cdc_bridge.client.consumer`). Their headers say why (``Cdc-Reason``) and from
where (``Cdc-Original-Subject``, ``-Seq``, ``-Stream``, ``-Id``, ``Cdc-Consumer``,
``Cdc-Deliveries``, ``Cdc-Dead-Lettered-At``).

* ``list`` — one line per dead letter (``--subject`` narrows, e.g.
  ``cdc_dlq._consumer.billing``);
* ``show SEQ`` — headers and body of one;
* ``redrive SEQ... | --all`` — publish the body again to its original subject (or
  ``--to``), with a new ``Nats-Msg-Id`` (``redrive:<stream>:<seq>``, so a re-run does not
  publish twice) and ``Cdc-Replay-Seq`` set to the original stream sequence (handlers
  comparing :attr:`Event.sequence` still see how old it is), then delete it from the
  dead-letter stream (``--keep`` keeps it). A redriven event lands after everything
  published since: every consumer of that subject receives it again, and those with a
  seen-store skip it if they applied it;
* ``migrate`` — move dead letters of an older version (``<prefix>._dlq.>`` inside the
  main stream) into the dead-letter stream, then purge them from the main stream.

Registered in :mod:`cdc_bridge.cli.main` with one line.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from cdc_bridge.cli.common import load_or_exit
from cdc_bridge.config import BridgeConfig
from cdc_bridge.kernel.errors import BridgeError
from cdc_bridge.kernel.events import LEGACY_DLQ_TOKEN, dead_letter_prefix, dead_letter_stream
from cdc_bridge.kernel.wire import (
    MSG_ID,
    ORIGINAL_SEQ,
    ORIGINAL_STREAM,
    ORIGINAL_SUBJECT,
    REASON,
    REDRIVEN_FROM,
    REPLAY_SEQ,
)
from cdc_bridge.relay.dlq_stream import ensure_dlq_stream
from cdc_bridge.relay.publisher import connect_once

T = TypeVar("T")
CONFIG = click.option("-c", "--config", "config_path", required=True,
                      type=click.Path(dir_okay=False, path_type=Path), help="YAML config file.")


_load = load_or_exit


def _run(config: BridgeConfig, work: Callable[[Client, JetStreamContext], Awaitable[T]]) -> T:
    async def go() -> T:
        nc = await connect_once(config.nats)
        try:
            return await work(nc, nc.jetstream())
        finally:
            await nc.close()
    try:
        return asyncio.run(go())
    except BridgeError as e:
        click.echo(f"cdc-bridge dlq: {e}", err=True)
        sys.exit(1)


async def read_dead_letters(js: JetStreamContext, stream: str, subject: str,
                            limit: int | None = None) -> list[Any]:
    """The dead letters of ``stream`` on ``subject``, oldest first (no acks left behind)."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return []
    if info.state.messages == 0:
        return []
    sub = await js.pull_subscribe(subject, stream=stream, config=api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL,
        inactive_threshold=30.0, mem_storage=True))
    out: list[Any] = []
    try:
        while limit is None or len(out) < limit:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except TimeoutError:
                break
            out.extend(msgs)
            if msgs and msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out if limit is None else out[:limit]


def _row(m: Any) -> dict[str, Any]:
    h = dict(m.headers or {})
    return {"seq": m.metadata.sequence.stream, "time": m.metadata.timestamp.isoformat(),
            "subject": m.subject, "reason": h.get(REASON, ""),
            "original_subject": h.get(ORIGINAL_SUBJECT, ""), "size": len(m.data)}


@click.group("dlq")
def dlq_command() -> None:
    """Dead letters: list, show, redrive, migrate old ones."""


@dlq_command.command("list")
@CONFIG
@click.option("--subject", default=None, help="Only these (default: <prefix>_dlq.>).")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_command(config_path: Path, subject: str | None, limit: int, as_json: bool) -> None:
    """One line per dead letter: sequence, time, subject, reason, original subject."""
    config = _load(config_path)
    stream = dead_letter_stream(config.nats.stream)
    filt = subject or f"{dead_letter_prefix(config.nats.subject_prefix)}.>"
    msgs = _run(config, lambda nc, js: read_dead_letters(js, stream, filt, limit))
    for m in msgs:
        row = _row(m)
        click.echo(json.dumps(row) if as_json else
                   f"{row['seq']:>8}  {row['time'][:19]}  {row['subject']}  "
                   f"{row['original_subject']}  {row['reason'][:120]}")
    if not as_json:
        click.echo(f"{len(msgs)} dead letter(s) in {stream}", err=True)


@dlq_command.command("show")
@CONFIG
@click.argument("seq", type=int)
def show_command(config_path: Path, seq: int) -> None:
    """Headers and body of dead letter SEQ."""
    config = _load(config_path)
    stream = dead_letter_stream(config.nats.stream)

    async def get(nc: Client, js: JetStreamContext) -> Any:
        try:
            return await js.get_msg(stream, seq=seq)
        except nats.js.errors.NotFoundError:
            return None
    raw = _run(config, get)
    if raw is None:
        click.echo(f"cdc-bridge dlq: no message {seq} in {stream}", err=True)
        sys.exit(1)
    click.echo(f"seq: {seq}\nsubject: {raw.subject}")
    for k, v in sorted((raw.headers or {}).items()):
        click.echo(f"{k}: {v}")
    click.echo("")
    click.echo((raw.data or b"").decode("utf-8", "replace"))


def redrive_headers(headers: dict[str, str], stream: str, seq: int) -> dict[str, str]:
    """The redriven copy's headers: the original's, a new id, the original sequence."""
    out = {k: v for k, v in headers.items() if not k.startswith("Nats-")}
    out[MSG_ID] = f"redrive:{stream}:{seq}"
    out[REDRIVEN_FROM] = f"{stream}:{seq}"
    original_seq = headers.get(REPLAY_SEQ) or headers.get(ORIGINAL_SEQ)
    if original_seq and headers.get(ORIGINAL_STREAM, "") in ("", stream.removesuffix("_DLQ")):
        out[REPLAY_SEQ] = original_seq
    return out


async def redrive(js: JetStreamContext, stream: str, msgs: list[Any], to: str | None,
                  keep: bool, say: Callable[[str], None]) -> int:
    done = 0
    for m in msgs:
        seq = m.metadata.sequence.stream
        headers = dict(m.headers or {})
        target = to or headers.get(ORIGINAL_SUBJECT)
        if not target or not m.data:
            say(f"{seq}: skipped ({'no original subject' if not target else 'body was dropped'})")
            continue
        ack = await js.publish(target, m.data, headers=redrive_headers(headers, stream, seq))
        if not keep:
            await js.delete_msg(stream, seq)
        say(f"{seq}: redriven to {target} (stream {ack.stream} seq {ack.seq}"
            f"{', already there' if ack.duplicate else ''})")
        done += 1
    return done


@dlq_command.command("redrive")
@CONFIG
@click.argument("seqs", type=int, nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter on --subject.")
@click.option("--subject", default=None, help="With --all: only these.")
@click.option("--to", default=None, help="Publish here instead of the original subject.")
@click.option("--keep", is_flag=True, help="Keep the dead letters after redriving.")
def redrive_command(config_path: Path, seqs: tuple[int, ...], all_: bool, subject: str | None,
                    to: str | None, keep: bool) -> None:
    """Publish dead letters again to their original subject, then delete them."""
    if not seqs and not all_:
        click.echo("cdc-bridge dlq redrive: give sequences or --all", err=True)
        sys.exit(2)
    config = _load(config_path)
    stream = dead_letter_stream(config.nats.stream)
    filt = subject or f"{dead_letter_prefix(config.nats.subject_prefix)}.>"

    async def work(nc: Client, js: JetStreamContext) -> int:
        msgs = await read_dead_letters(js, stream, filt)
        if seqs:
            wanted = set(seqs)
            msgs = [m for m in msgs if m.metadata.sequence.stream in wanted]
            missing = wanted - {m.metadata.sequence.stream for m in msgs}
            for seq in sorted(missing):
                click.echo(f"{seq}: not in {stream}", err=True)
        return await redrive(js, stream, msgs, to, keep, click.echo)
    n = _run(config, work)
    click.echo(f"redrove {n} dead letter(s)")


@dlq_command.command("migrate")
@CONFIG
@click.option("--keep", is_flag=True, help="Do not purge them from the main stream.")
def migrate_command(config_path: Path, keep: bool) -> None:
    """Move old dead letters (<prefix>._dlq.> in the main stream) to the dead-letter stream."""
    config = _load(config_path)
    prefix = config.nats.subject_prefix
    old = f"{prefix}.{LEGACY_DLQ_TOKEN}"

    async def work(nc: Client, js: JetStreamContext) -> int:
        await ensure_dlq_stream(js, config.nats)
        msgs = await read_dead_letters(js, config.nats.stream, f"{old}.>")
        for m in msgs:
            target = dead_letter_prefix(prefix) + m.subject[len(old):]
            await js.publish(target, m.data, headers=dict(m.headers or {}))
        if msgs and not keep:
            await js.purge_stream(config.nats.stream, subject=f"{old}.>")
        return len(msgs)
    n = _run(config, work)
    click.echo(f"moved {n} dead letter(s) from {config.nats.stream} ({old}.>) to "
               f"{dead_letter_stream(config.nats.stream)} ({dead_letter_prefix(prefix)}.>)"
               + ("" if keep or not n else f"; purged {old}.> from {config.nats.stream}"))
