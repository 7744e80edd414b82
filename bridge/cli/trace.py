"""``cdc-bridge trace``: where one event is on its way, stage by stage.

Given an event id, or an adapter, table (and key), it gathers the facts and leaves the
meaning to :mod:`cdc_bridge.cli.trace_logic`:

1. **The outbox** (read like ``status``: the pending rows, up to :data:`OUTBOX_SCAN`):
   a pending row is an event captured and committed but not published yet. Published
   rows are deleted, so "published" is learned from the stream.
2. **The stream**: read newest first, in windows of sequences that grow from
   :data:`FIRST_WINDOW` to :data:`MAX_WINDOW`, each through a short-lived pull consumer
   with no acks (deleted after use), up to ``--scan-limit`` sequences back. By id it
   reads headers only and matches ``Nats-Msg-Id`` (on the exact subject when the outbox
   still holds the row, on ``<prefix>.<adapter>.>`` with ``--adapter``), then gets the
   one body by sequence; by table and key it reads that table's subjects with bodies
   and matches ``data.key``; the latest event of a table without a key is one
   ``last_by_subj`` get.
3. **The dead letters** (``<STREAM>_DLQ``, headers only, newest first): the relay's
   (``Cdc-Original-Id``, or its ``Cdc-Adapter``/``-Table``/``-Key`` for a table query),
   a source's (its own ``Nats-Msg-Id``) and consumers' (``Cdc-Original-Id``, or
   ``Cdc-Original-Stream`` and ``-Seq``, with ``Cdc-Consumer``).
4. **The durable consumers** of the stream (their info: ack floor, delivered, pending):
   for one that has not delivered the event yet, one more short-lived consumer starting
   at its sequence, on the same filter, counts what the stream holds from it on, hence
   how many messages are ahead of it.

NATS not reachable: what the outbox says is still shown (a pending event exits 3), and
an event the outbox does not hold cannot be told (exit 5). Nothing is written, except
the short-lived consumers, which delete themselves on inactivity should the command die.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from cdc_bridge.adapters.subjects import subject_router
from cdc_bridge.cli.common import load_or_exit
from cdc_bridge.cli.trace_logic import (
    EXIT_UNKNOWN,
    EXIT_USAGE,
    WAITING,
    ConsumerFacts,
    EventFacts,
    EventTrace,
    OutboxRow,
    StoredMsg,
    TraceQuery,
    TraceReport,
    classify_consumer,
    dead_letter_matches_table,
    dead_letter_targets,
    describe_body,
    merge_events,
    parse_key,
    render_text,
    report_json,
    with_ahead,
)
from cdc_bridge.config import BridgeConfig
from cdc_bridge.daemon.logs import RedactingFilter
from cdc_bridge.kernel.errors import BridgeError
from cdc_bridge.kernel.events import dead_letter_prefix, dead_letter_stream
from cdc_bridge.kernel.subjects import ANY
from cdc_bridge.outbox.factory import open_store
from cdc_bridge.relay.publisher import connect_once

#: Pending outbox rows read at most (a larger backlog: the newest are not looked at).
OUTBOX_SCAN = 200_000
#: Stream sequences read by the first window (newest first), and the largest window.
FIRST_WINDOW = 1_000
MAX_WINDOW = 64_000
FETCH = 1_000
#: Short-lived consumers delete themselves after this long unused (the command died, or
#: its NATS user may not delete consumers).
EPHEMERAL_INACTIVE_S = 15.0
#: Deleting one of them is given this long; after one failure no more are tried.
DELETE_TIMEOUT_S = 2.0


def _ms(moment: dt.datetime | None) -> int:
    return 0 if moment is None else int(moment.timestamp() * 1000)


# -- the outbox ----------------------------------------------------------------------------


@dataclass(slots=True)
class OutboxFacts:
    rows: list[OutboxRow] = field(default_factory=list)
    read: bool = True
    notes: list[str] = field(default_factory=list)


def read_outbox(config: BridgeConfig, query: TraceQuery, max_rows: int = OUTBOX_SCAN
                ) -> OutboxFacts:
    """The pending rows the query asks for (the newest ``query.wanted`` of them)."""
    url = config.outbox_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return OutboxFacts(notes=[f"outbox {url[len('sqlite:///'):]} does not exist "
                                  "(nothing captured with this config on this host)"],
                           read=False)
    prefix = config.nats.subject_prefix
    found: collections.deque[OutboxRow] = collections.deque(maxlen=query.wanted)
    try:
        store = open_store(url)
    except Exception as e:  # an unreachable PostgreSQL, a damaged file: say so, go on
        return OutboxFacts(read=False, notes=[f"outbox not read: {type(e).__name__}: {e}"])
    try:
        after, scanned = 0, 0
        while scanned < max_rows:
            rows = store.pending(after, min(5_000, max_rows - scanned))
            if not rows:
                break
            for r in rows:
                m = r.message
                if query.matches(prefix, m.msg_id, m.subject, m.payload):
                    found.append(OutboxRow(r.seq, m.msg_id, m.subject, m.payload, m.created_ms))
            scanned += len(rows)
            after = rows[-1].seq
            if query.event_id is not None and found:
                break
        else:
            return OutboxFacts(list(found), notes=[f"outbox: only the first {max_rows} "
                                                   "pending rows were read"])
    except Exception as e:
        return OutboxFacts(list(found), read=False,
                           notes=[f"outbox not read: {type(e).__name__}: {e}"])
    finally:
        store.close()
    return OutboxFacts(list(found))


# -- reading a stream newest first --------------------------------------------------------


def _ephemeral(filters: tuple[str, ...] | str | None, start_seq: int,
               headers_only: bool = False) -> api.ConsumerConfig:
    cfg = api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq, inactive_threshold=EPHEMERAL_INACTIVE_S, mem_storage=True,
        headers_only=headers_only or None)
    if isinstance(filters, str):
        cfg.filter_subject = filters
    elif filters and len(filters) == 1:
        cfg.filter_subject = filters[0]
    elif filters:
        cfg.filter_subjects = list(filters)
    return cfg


@dataclass(slots=True)
class Ephemerals:
    """Creates the short-lived consumers and deletes them after use; a user that may not
    delete consumers (a read-only one) is asked once, then they are left to expire."""

    js: JetStreamContext
    can_delete: bool = True

    async def create(self, stream: str, cfg: api.ConsumerConfig) -> api.ConsumerInfo:
        return await self.js.add_consumer(stream, cfg)

    async def drop(self, stream: str, name: str) -> None:
        if not self.can_delete:
            return
        try:
            await asyncio.wait_for(self.js.delete_consumer(stream, name), DELETE_TIMEOUT_S)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
            self.can_delete = False


async def _read_window(eph: Ephemerals, stream: str, filt: str, lo: int, hi: int,
                       headers_only: bool) -> list[Msg]:
    """The messages on ``filt`` with sequences ``lo..hi``, in stream order."""
    js = eph.js
    info = await eph.create(stream, _ephemeral(filt, lo, headers_only))
    out: list[Msg] = []
    try:
        if not info.num_pending:
            return out
        sub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
        try:
            idle = 0
            while True:
                try:
                    msgs = await sub.fetch(FETCH, timeout=1.0)
                except TimeoutError:  # nats-py's own subclass, or asyncio's
                    idle += 1
                    if idle >= 3 or not (await sub.consumer_info()).num_pending:
                        return out
                    continue
                for m in msgs:
                    if m.metadata.sequence.stream > hi:
                        return out
                    out.append(m)
                    if m.metadata.num_pending == 0 or m.metadata.sequence.stream == hi:
                        return out
        finally:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await sub.unsubscribe()
    finally:
        await eph.drop(stream, info.name)


@dataclass(slots=True)
class Scan:
    """A newest-first read of one stream on one filter, ``budget`` sequences back."""

    eph: Ephemerals
    stream: str
    filt: str
    headers_only: bool
    budget: int
    #: Set when the budget ran out before the stream's first sequence.
    truncated: bool = False

    async def messages(self) -> AsyncIterator[Msg]:
        info = await self.eph.js.stream_info(self.stream)
        first, hi = info.state.first_seq, info.state.last_seq
        if not info.state.messages:
            return
        window, left = FIRST_WINDOW, self.budget
        while hi >= first:
            if left <= 0:
                self.truncated = True
                return
            lo = max(first, hi - min(window, left) + 1)
            for m in reversed(await _read_window(self.eph, self.stream, self.filt, lo, hi,
                                                 self.headers_only)):
                yield m
            left -= hi - lo + 1
            hi = lo - 1
            window = min(window * 4, MAX_WINDOW)


def _stored(m: Msg, body: bytes | None) -> StoredMsg:
    meta = m.metadata
    return StoredMsg(meta.stream, meta.sequence.stream, m.subject, _ms(meta.timestamp),
                     dict(m.headers or {}), body)


async def _get(js: JetStreamContext, stream: str, seq: int | None = None,
               subject: str | None = None) -> StoredMsg | None:
    try:
        raw = await js.get_msg(stream, seq=seq, subject=subject)
    except nats.js.errors.NotFoundError:
        return None
    headers = {str(k): str(v) for k, v in (raw.headers or {}).items()}
    return StoredMsg(stream, int(raw.seq or 0), str(raw.subject), _ms(raw.time), headers,
                     raw.data or b"")


# -- the stream, its dead letters, its consumers ------------------------------------------


async def find_stored(eph: Ephemerals, config: BridgeConfig, query: TraceQuery,
                      outbox: list[OutboxRow], scan_limit: int, notes: list[str]
                      ) -> list[StoredMsg]:
    """The stream's messages for the query, newest first (at most ``query.wanted``)."""
    js = eph.js
    stream, prefix = config.nats.stream, config.nats.subject_prefix
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        notes.append(f"stream {stream} does not exist")
        return []
    filt = query.subject_filter(prefix)
    if query.event_id is not None:
        known = next((r.subject for r in outbox if r.subject.startswith(prefix + ".")), None)
        scan = Scan(eph, stream, known or filt, True, scan_limit)
        async for m in scan.messages():
            if (m.headers or {}).get("Nats-Msg-Id") == query.event_id:
                got = await _get(js, stream, seq=m.metadata.sequence.stream)
                return [got] if got else [_stored(m, None)]
        _say_truncated(scan, notes)
        return []
    if query.key is None and query.wanted == 1 and query.subjects is None:
        with contextlib.suppress(nats.js.errors.APIError):  # (a server without wildcards)
            got = await _get(js, stream, subject=filt)
            return [got] if got else []
    out: list[StoredMsg] = []
    scan = Scan(eph, stream, filt, False, scan_limit)
    async for m in scan.messages():
        if query.matches(prefix, (m.headers or {}).get("Nats-Msg-Id", ""), m.subject, m.data):
            out.append(_stored(m, m.data))
            if len(out) >= query.wanted:
                return out
    _say_truncated(scan, notes)
    return out


def _say_truncated(scan: Scan, notes: list[str]) -> None:
    if scan.truncated:
        notes.append(f"{scan.stream}: only the newest {scan.budget} sequences were searched "
                     "(--scan-limit)")


async def find_dead_letters(eph: Ephemerals, config: BridgeConfig, query: TraceQuery,
                            events: list[EventFacts], scan_limit: int, notes: list[str]
                            ) -> list[StoredMsg]:
    """The dead letters about the query's events (by id, by stream sequence, or for a
    table query by the identity headers of the bridge's dead letters)."""
    js = eph.js
    stream = dead_letter_stream(config.nats.stream)
    wanted = {e.id for e in events}
    wanted.update(f"{e.stored.stream}:{e.stored.seq}" for e in events if e.stored)
    if query.event_id is not None:
        wanted.add(query.event_id)
    try:
        await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return []
    out: list[StoredMsg] = []
    scan = Scan(eph, stream, f"{dead_letter_prefix(config.nats.subject_prefix)}.>", True,
                scan_limit)
    async for m in scan.messages():
        dl = _stored(m, None)
        if dead_letter_targets(dl) & wanted or dead_letter_matches_table(query, dl):
            out.append(dl)
    _say_truncated(scan, notes)
    return out


async def _with_bodies(js: JetStreamContext, events: list[EventFacts]) -> None:
    """Events known only from a dead letter (read headers only): the body it kept."""
    for ev in events:
        if ev.stored is None and ev.outbox is None and ev.dead_letters:
            dl = ev.dead_letters[0]
            got = await _get(js, dl.stream, seq=dl.seq)
            if got is not None and describe_body(got.body).op is not None:
                ev.body = describe_body(got.body)


def consumer_facts(info: api.ConsumerInfo) -> ConsumerFacts:
    cfg = info.config
    filters = tuple(cfg.filter_subjects or ([cfg.filter_subject] if cfg.filter_subject else []))
    return ConsumerFacts(
        name=info.name, filters=filters,
        ack_policy=str(getattr(cfg.ack_policy, "value", cfg.ack_policy) or "explicit"),
        deliver_policy=str(getattr(cfg.deliver_policy, "value", cfg.deliver_policy) or "all"),
        created_ms=_ms(info.created),
        delivered_seq=info.delivered.stream_seq if info.delivered else 0,
        ack_floor_seq=info.ack_floor.stream_seq if info.ack_floor else 0,
        num_pending=info.num_pending or 0, num_ack_pending=info.num_ack_pending or 0,
        opt_start_seq=cfg.opt_start_seq,
        opt_start_ms=_ms(cfg.opt_start_time) if cfg.opt_start_time else None)


async def durable_consumers(js: JetStreamContext, stream: str) -> list[ConsumerFacts]:
    out: list[ConsumerFacts] = []
    seen = 0
    while True:
        page = await js.consumers_info(stream, offset=seen or None)
        seen += len(page)
        out.extend(consumer_facts(c) for c in page if c.config.durable_name)
        if len(page) < 256:
            return sorted(out, key=lambda c: c.name)


async def pending_from(eph: Ephemerals, stream: str, filters: tuple[str, ...],
                       seq: int) -> int:
    """How many messages on ``filters`` the stream holds from ``seq`` on (it included)."""
    info = await eph.create(stream, _ephemeral(filters, seq))
    try:
        return info.num_pending or 0
    finally:
        await eph.drop(stream, info.name)


async def consumer_states(eph: Ephemerals, stream: str, event: EventFacts,
                          consumers: list[ConsumerFacts]) -> EventTrace:
    trace = EventTrace(event)
    if event.stored is None or event.stored.stream != stream:
        return trace
    for c in consumers:
        verdict = classify_consumer(c, event.stored, event.dead_letters)
        if verdict.state == WAITING:
            verdict = with_ahead(verdict, c, await pending_from(eph, stream, c.filters,
                                                                event.stored.seq))
        trace.consumers.append(verdict)
    return trace


# -- all of it -----------------------------------------------------------------------------


async def gather(config: BridgeConfig, query: TraceQuery, scan_limit: int) -> TraceReport:
    """Every fact about the query's events, as a :class:`TraceReport`."""
    stream = config.nats.stream
    outbox = read_outbox(config, query)
    notes = list(outbox.notes)
    try:
        nc = await connect_once(config.nats)
    except BridgeError as e:
        notes.append(f"NATS not reachable ({e}): the stream, its consumers and dead letters "
                     "were not looked at")
        events = merge_events(outbox.rows, [], [])[:query.wanted]
        return TraceReport(query, [EventTrace(f) for f in events], stream, notes,
                           nats_unreachable=True, outbox_read=outbox.read)
    try:
        js = nc.jetstream()
        eph = Ephemerals(js)
        stored = await find_stored(eph, config, query, outbox.rows, scan_limit, notes)
        found = merge_events(outbox.rows, stored, [])[:query.wanted]
        dead = await find_dead_letters(eph, config, query, found, scan_limit, notes)
        events = merge_events(outbox.rows, stored, dead)[:query.wanted]
        await _with_bodies(js, events)
        consumers = (await durable_consumers(js, stream)
                     if any(e.stored is not None for e in events) else [])
        traces = [await consumer_states(eph, stream, e, consumers) for e in events]
        return TraceReport(query, traces, stream, notes, outbox_read=outbox.read)
    finally:
        await nc.close()


# -- the command ---------------------------------------------------------------------------


def build_query(event_id: str | None, adapter: str | None, table: str | None,
                schema: str | None, keys: tuple[str, ...], all_: bool, limit: int
                ) -> TraceQuery:
    """The query from the command's options (``ValueError`` for a usage error)."""
    if table and schema is None and "." in table:
        schema, table = table.split(".", 1)
    return TraceQuery(event_id=event_id, adapter=adapter, table=table, schema=schema,
                      key=parse_key(keys), all=all_, limit=limit)


def templated_query(query: TraceQuery, config: BridgeConfig) -> TraceQuery:
    """The query for an adapter whose subjects are templated (docs/subjects.md): read the
    table's template filter (``{op}`` and columns as ``*``), or the whole prefix when it
    cannot tell; the events are then picked by their body's ``data.source``."""
    cfg = next((a for a in config.adapter_configs if a.name == query.adapter), None)
    router = subject_router(cfg) if cfg is not None else None
    if router is None:
        return query
    prefix = config.nats.subject_prefix
    if query.table is None:
        return replace(query, subjects=f"{prefix}.>")
    schemas = [query.schema] if query.schema is not None else sorted(
        {s.schema for s in router.scopes if s.table in (query.table, ANY)}, key=str)
    filters = {router.filter_for(prefix, schema, query.table)
               or replace(query, schema=schema).subject_filter(prefix)
               for schema in schemas if schema != ANY}
    only = filters.pop() if len(filters) == 1 else f"{prefix}.>"
    return replace(query, subjects=only)


@click.command("trace")
@click.option("-c", "--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="YAML config file.")
@click.argument("event_id", required=False)
@click.option("-a", "--adapter", default=None, help="The adapter (with an id: narrows the search).")
@click.option("-t", "--table", default=None, help="TABLE, or SCHEMA.TABLE.")
@click.option("--schema", default=None, help="The table's schema (default: any).")
@click.option("-k", "--key", "keys", multiple=True,
              help="FIELD=VALUE (repeat for a composite key) or a JSON object.")
@click.option("--all", "all_", is_flag=True,
              help="Every event of the key (or table), newest first, up to --limit.")
@click.option("--limit", type=int, default=20, show_default=True,
              help="With --all: events shown at most.")
@click.option("--scan-limit", type=int, default=1_000_000, show_default=True,
              help="Stream sequences searched at most, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def trace_command(config_path: Path, event_id: str | None, adapter: str | None,
                  table: str | None, schema: str | None, keys: tuple[str, ...], all_: bool,
                  limit: int, scan_limit: int, as_json: bool) -> None:
    """Show an event's journey: source, outbox, stream, each consumer, dead letters.

    Trace EVENT_ID, or the latest event of --adapter/--table (and --key; --all for its
    history). One line per stage: source position and commit time; captured, pending in
    the outbox or published; stored (stream sequence, time); for each durable consumer
    of the stream, acknowledged, delivered, or how many messages are ahead of it;
    dead-lettered, by whom and why.

    \b
    Exit codes:
      0  found; every durable consumer it is for has acknowledged it
      1  not found (not in the outbox, the stream or the dead letters)
      2  usage or configuration error
      3  in flight: pending in the outbox, or a consumer has not acknowledged it
      4  dead-lettered (by the bridge or by a consumer)
      5  cannot tell: not in the outbox, and NATS is not reachable
    With several events (--all), the worst: 4, then 3, then 0.
    """
    config = load_or_exit(config_path)
    try:
        query = templated_query(
            build_query(event_id, adapter, table, schema, keys, all_, limit), config)
        if scan_limit < 1:
            raise ValueError("--scan-limit must be at least 1")
    except ValueError as e:
        click.echo(f"cdc-bridge trace: {e}", err=True)
        sys.exit(EXIT_USAGE)
    redact: Callable[[str], str] = RedactingFilter(config.secrets).redact
    try:
        report = asyncio.run(gather(config, query, scan_limit))
    except (nats.errors.Error, TimeoutError, BridgeError) as e:
        click.echo(redact(f"cdc-bridge trace: NATS failed while tracing: "
                          f"{type(e).__name__}: {e}"), err=True)
        sys.exit(EXIT_UNKNOWN)
    click.echo(redact(json.dumps(report_json(report), indent=2) if as_json
                      else render_text(report)))
    sys.exit(report.exit_code)
