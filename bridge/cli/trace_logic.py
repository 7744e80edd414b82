"""The pure half of ``cdc-bridge trace``: what an event's facts mean, and how to say it.

:mod:`cdc_bridge.cli.trace` gathers facts (outbox rows, stream messages, dead letters,
consumer info) and hands them here as plain values; this module, with no I/O and no
clock, decides:

- which outbox rows and messages a query asks for (:class:`TraceQuery`,
  :func:`subject_matches`, :func:`key_matches`), and which dead letters concern an event
  (:func:`dead_letter_targets`);
- how the facts of one event merge (:func:`merge_events`), in what order they are shown
  (newest first) and what each durable consumer's state is (:func:`classify_consumer`);
- the event's verdict and the command's exit code (:func:`event_verdict`,
  :func:`exit_code`): :data:`EXIT_DONE` 0, :data:`EXIT_NOT_FOUND` 1, :data:`EXIT_USAGE` 2,
  :data:`EXIT_IN_FLIGHT` 3, :data:`EXIT_DEAD_LETTERED` 4, :data:`EXIT_UNKNOWN` 5;
- the ``--json`` object (:func:`report_json`) and the text timeline (:func:`render_text`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from cdc_bridge.kernel.events import subject_token
from cdc_bridge.kernel.wire import ADAPTER as ADAPTER_HEADER
from cdc_bridge.kernel.wire import (
    CONSUMER,
    DELIVERIES,
    KEY,
    MSG_ID,
    ORIGINAL_ID,
    ORIGINAL_SEQ,
    ORIGINAL_STREAM,
    ORIGINAL_SUBJECT,
    POSITION,
    REASON,
    SCHEMA,
    TABLE,
)
from cdc_bridge.relay.rules import subject_matches

#: Found, and every durable consumer it is for has acknowledged it.
EXIT_DONE = 0
#: No event matches (nowhere: outbox, stream, dead letters).
EXIT_NOT_FOUND = 1
#: Bad options or an invalid config file.
EXIT_USAGE = 2
#: Found, still on its way: pending in the outbox, or a consumer has not acknowledged it.
EXIT_IN_FLIGHT = 3
#: Dead-lettered, by the bridge (capture or relay) or by a consumer.
EXIT_DEAD_LETTERED = 4
#: Not found in the outbox, and NATS could not be asked: no answer.
EXIT_UNKNOWN = 5

# Consumer states (the ``state`` of :class:`ConsumerVerdict`).
ACKED = "acknowledged"
DELIVERED_NO_ACK = "delivered"  # an AckPolicy NONE consumer: delivered is done
DELIVERED = "delivered_unacked"
WAITING = "waiting"
NOT_FOR = "not_for_consumer"
BEFORE_START = "before_start"
DEAD = "dead_lettered"

# Event verdicts.
V_DONE = "done"
V_IN_FLIGHT = "in_flight"
V_PENDING = "pending_in_outbox"
V_DEAD = "dead_lettered"


@dataclass(frozen=True, slots=True)
class TraceQuery:
    """What to trace: one event by id, or the events of an adapter's table (and key)."""

    event_id: str | None = None
    adapter: str | None = None
    table: str | None = None
    #: ``None``: any schema (the subject token is a wildcard).
    schema: str | None = None
    #: Field -> value as text (:func:`normalize_key`); ``None``: any row of the table.
    key: Mapping[str, str] | None = None
    #: Every matching event (up to ``limit``) rather than the latest one.
    all: bool = False
    limit: int = 20
    #: The subjects to read when the adapter's subjects are templated (docs/subjects.md):
    #: the template's filter, or the whole prefix; events are then told by their body.
    subjects: str | None = None

    def __post_init__(self) -> None:
        if self.event_id is not None:
            if not self.event_id.strip():
                raise ValueError("the event id is empty")
            if self.key is not None or self.all:
                raise ValueError("--key and --all go with --adapter/--table, not an event id")
        elif not (self.adapter and self.table):
            raise ValueError("give an event id, or --adapter and --table (and --key)")
        if self.table is not None and not self.adapter:
            raise ValueError("--table needs --adapter")
        if self.limit < 1:
            raise ValueError("--limit must be at least 1")

    @property
    def wanted(self) -> int:
        """How many events to show at most."""
        return 1 if self.event_id is not None or not self.all else self.limit

    def subject_filter(self, prefix: str) -> str:
        """The subjects the query's events are on (``<prefix>.>`` without an adapter)."""
        if self.subjects is not None:
            return self.subjects
        if not self.adapter:
            return f"{prefix}.>"
        if not self.table:
            return f"{prefix}.{subject_token(self.adapter)}.>"
        schema = "*" if self.schema is None else subject_token(self.schema)
        return f"{prefix}.{subject_token(self.adapter)}.{schema}.{subject_token(self.table)}.*"

    def matches(self, prefix: str, msg_id: str, subject: str, body: bytes | None) -> bool:
        """Whether a message (outbox row or stored message) is one the query asks for."""
        if self.event_id is not None:
            return msg_id == self.event_id
        if not subject_matches(self.subject_filter(prefix), subject):
            return False
        info = describe_body(body) if self.subjects is not None or self.key is not None \
            else BodyInfo()
        if self.subjects is not None and not self._same_table(info.source):
            return False
        return self.key is None or key_matches(self.key, info.key)

    def _same_table(self, source: Mapping[str, Any] | None) -> bool:
        """The body's ``data.source`` names the query's adapter (and table, schema)."""
        if not source or source.get("adapter") != self.adapter:
            return False
        if self.table is not None and source.get("table") != self.table:
            return False
        return self.schema is None or (source.get("schema") or "_") == self.schema

    def as_dict(self) -> dict[str, Any]:
        if self.event_id is not None:
            return {"id": self.event_id, "adapter": self.adapter, "table": self.table}
        return {"adapter": self.adapter, "schema": self.schema, "table": self.table,
                "key": dict(self.key) if self.key is not None else None, "all": self.all,
                "limit": self.limit}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def normalize_key(key: Mapping[str, Any]) -> dict[str, str]:
    """Field -> value as text (``5`` and ``"5"`` are the same key value)."""
    return {str(k): _text(v) for k, v in key.items()}


def parse_key(values: Sequence[str]) -> dict[str, str] | None:
    """``--key id=5 --key region=eu`` or ``--key '{"id": 5}'``; ``None`` for none."""
    if not values:
        return None
    out: dict[str, str] = {}
    for value in values:
        text = value.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"--key {value!r}: not a JSON object ({e.msg})") from None
            if not isinstance(parsed, dict) or not parsed:
                raise ValueError(f"--key {value!r}: not a non-empty JSON object")
            out.update(normalize_key(parsed))
            continue
        name, sep, raw = text.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--key {value!r}: expected FIELD=VALUE or a JSON object")
        out[name.strip()] = raw
    return out


def key_matches(wanted: Mapping[str, str], actual: Mapping[str, Any] | None) -> bool:
    """Every field asked for is in the event's key with that value (a partial key of a
    composite one matches)."""
    if not actual:
        return False
    have = normalize_key(actual)
    return all(have.get(k) == v for k, v in wanted.items())


@dataclass(frozen=True, slots=True)
class BodyInfo:
    """What a message body says about its event (all ``None`` for a body that is not a
    CloudEvent, e.g. a dropped or raw dead-letter body)."""

    op: str | None = None
    key: Mapping[str, Any] | None = None
    source: Mapping[str, Any] | None = None


def describe_body(body: bytes | None) -> BodyInfo:
    if not body:
        return BodyInfo()
    try:
        ce = orjson.loads(body)
        data = ce["data"]
        op = data.get("op")
        key = data.get("key")
        source = data.get("source")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return BodyInfo()
    return BodyInfo(str(op) if op is not None else None, key if isinstance(key, dict) else None,
                    source if isinstance(source, dict) else None)


# -- the facts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A pending outbox row (published rows are deleted: only pending ones are facts)."""

    seq: int
    msg_id: str
    subject: str
    payload: bytes
    created_ms: int


@dataclass(frozen=True, slots=True)
class StoredMsg:
    """A message as a stream holds it (``body`` ``None``: read headers only)."""

    stream: str
    seq: int
    subject: str
    time_ms: int
    headers: Mapping[str, str]
    body: bytes | None = None

    @property
    def msg_id(self) -> str:
        return self.headers.get(MSG_ID, "")


@dataclass(frozen=True, slots=True)
class ConsumerFacts:
    """One durable consumer of the stream, from its info."""

    name: str
    filters: tuple[str, ...]
    ack_policy: str
    deliver_policy: str
    created_ms: int
    delivered_seq: int
    ack_floor_seq: int
    num_pending: int
    num_ack_pending: int
    opt_start_seq: int | None = None
    opt_start_ms: int | None = None

    def wants(self, subject: str) -> bool:
        return not self.filters or any(subject_matches(f, subject) for f in self.filters)


@dataclass(frozen=True, slots=True)
class ConsumerVerdict:
    name: str
    state: str
    filters: tuple[str, ...] = ()
    delivered_seq: int = 0
    ack_floor_seq: int = 0
    #: Messages before this one the consumer has still to deliver or to get acked
    #: (``None`` until counted; only for :data:`WAITING`).
    ahead: int | None = None
    undelivered_before: int | None = None
    ack_pending: int = 0
    reason: str | None = None

    @property
    def in_flight(self) -> bool:
        return self.state in (WAITING, DELIVERED)


def dead_letter_kind(headers: Mapping[str, str]) -> str:
    """``consumer`` (a downstream consumer gave up), ``relay`` (the stream refused the
    event) or ``capture`` (a source could not turn its input into an event)."""
    if headers.get(CONSUMER):
        return "consumer"
    if headers.get(ORIGINAL_ID):
        return "relay"
    return "capture"


def dead_letter_targets(dl: StoredMsg) -> set[str]:
    """The event ids (and ``<stream>:<seq>`` of originals) a dead letter is about."""
    h = dl.headers
    out = {v for v in (h.get(ORIGINAL_ID),) if v}
    if dead_letter_kind(h) == "capture" and dl.msg_id:
        out.add(dl.msg_id)  # a source's dead letter is its own event
    if h.get(ORIGINAL_SEQ) and h.get(CONSUMER):
        out.add(f"{h.get(ORIGINAL_STREAM, '')}:{h[ORIGINAL_SEQ]}")
    return out


def dead_letter_event_id(dl: StoredMsg) -> str:
    """The id of the event a dead letter stands for."""
    return dl.headers.get(ORIGINAL_ID) or dl.msg_id or f"{dl.stream}:{dl.seq}"


def dead_letter_body(dl: StoredMsg) -> BodyInfo:
    """What a bridge dead letter says of its event: its body when that is the event, else
    the identity headers the relay writes (``Cdc-Key``, ``Cdc-Position``, ...)."""
    info = describe_body(dl.body)
    if info.op is not None:
        return info
    h = dl.headers
    try:
        key = json.loads(h.get(KEY, ""))
    except json.JSONDecodeError:
        key = None
    source = {name: h[header] for name, header in (
        ("adapter", ADAPTER_HEADER), ("schema", SCHEMA), ("table", TABLE),
        ("position", POSITION)) if h.get(header)}
    original = h.get(ORIGINAL_SUBJECT, "")
    return BodyInfo(original.rsplit(".", 1)[-1] if original else None,
                    key if isinstance(key, dict) else None, source or None)


def dead_letter_matches_table(query: TraceQuery, dl: StoredMsg) -> bool:
    """A bridge dead letter (capture or relay) of the query's adapter, table and key,
    from the identity headers the relay writes (``Cdc-Adapter``, ``-Table``, ``-Key``)."""
    h = dl.headers
    if query.event_id is not None or dead_letter_kind(h) == "consumer":
        return False
    if h.get(ADAPTER_HEADER) != query.adapter or h.get(TABLE) != query.table:
        return False
    if query.schema is not None and h.get(SCHEMA, query.schema) != query.schema:
        return False
    if query.key is None:
        return True
    try:
        key = json.loads(h.get(KEY, ""))
    except json.JSONDecodeError:
        return False
    return isinstance(key, dict) and key_matches(query.key, key)


@dataclass(slots=True)
class EventFacts:
    """Everything known of one event, merged from where it was seen."""

    id: str
    subject: str
    body: BodyInfo = field(default_factory=BodyInfo)
    outbox: OutboxRow | None = None
    stored: StoredMsg | None = None
    dead_letters: list[StoredMsg] = field(default_factory=list)

    @property
    def latest_ms(self) -> int:
        """When it was last seen anywhere (the order of the listing, newest first)."""
        times = [self.outbox.created_ms if self.outbox else 0,
                 self.stored.time_ms if self.stored else 0,
                 *(d.time_ms for d in self.dead_letters)]
        return max(times)


def merge_events(outbox: Iterable[OutboxRow], stored: Iterable[StoredMsg],
                 dead_letters: Iterable[StoredMsg]) -> list[EventFacts]:
    """One :class:`EventFacts` per event id, newest first. A dead letter joins the event
    it is about (by id, or by the stream and sequence a consumer read it at); one whose
    event was seen nowhere else stands for it."""
    events: dict[str, EventFacts] = {}
    for row in outbox:
        events[row.msg_id] = EventFacts(row.msg_id, row.subject, describe_body(row.payload),
                                        outbox=row)
    for msg in stored:
        ev = events.get(msg.msg_id)
        if ev is None:
            ev = events[msg.msg_id] = EventFacts(msg.msg_id, msg.subject)
        ev.stored = msg
        if msg.body is not None:
            ev.body = describe_body(msg.body) if msg.body else ev.body
    by_seq = {f"{e.stored.stream}:{e.stored.seq}": e for e in events.values() if e.stored}
    for dl in dead_letters:
        targets = dead_letter_targets(dl)
        ev = next((events[t] for t in targets if t in events), None) or next(
            (by_seq[t] for t in targets if t in by_seq), None)
        if ev is None:
            eid = dead_letter_event_id(dl)
            if dead_letter_kind(dl.headers) == "consumer":
                continue  # about an event this trace did not find
            ev = events[eid] = EventFacts(
                eid, dl.headers.get(ORIGINAL_SUBJECT) or dl.subject, dead_letter_body(dl))
        if all(d.seq != dl.seq for d in ev.dead_letters):
            ev.dead_letters.append(dl)
    return sorted(events.values(), key=lambda e: e.latest_ms, reverse=True)


# -- decisions -----------------------------------------------------------------------------


def classify_consumer(c: ConsumerFacts, msg: StoredMsg,
                      dead_letters: Sequence[StoredMsg] = ()) -> ConsumerVerdict:
    """Where the stored message ``msg`` is for consumer ``c``.

    In order: the consumer's filter does not take its subject (:data:`NOT_FOR`); it was
    stored before the consumer's start (deliver policy ``new``, ``by_start_sequence``,
    ``by_start_time``: :data:`BEFORE_START`); the consumer dead-lettered it (:data:`DEAD`);
    at or below the ack floor (:data:`ACKED`); delivered, with acks not required
    (:data:`DELIVERED_NO_ACK`) or not acknowledged yet (:data:`DELIVERED`); else not
    delivered yet (:data:`WAITING`, with :func:`with_ahead` to say how many are ahead).
    """
    base = ConsumerVerdict(c.name, WAITING, c.filters, c.delivered_seq, c.ack_floor_seq,
                           ack_pending=c.num_ack_pending)
    if not c.wants(msg.subject):
        return replace(base, state=NOT_FOR)
    policy = c.deliver_policy
    if (policy == "by_start_sequence" and c.opt_start_seq and msg.seq < c.opt_start_seq) or \
            (policy == "by_start_time" and c.opt_start_ms is not None
             and msg.time_ms < c.opt_start_ms) or \
            (policy == "new" and msg.time_ms < c.created_ms):
        return replace(base, state=BEFORE_START)
    for dl in dead_letters:
        if dl.headers.get(CONSUMER) == c.name and dl.headers.get(
                ORIGINAL_STREAM, msg.stream) == msg.stream:
            return replace(base, state=DEAD, reason=dl.headers.get(REASON, ""))
    if c.ack_policy == "none":
        return replace(base, state=DELIVERED_NO_ACK if msg.seq <= c.delivered_seq else WAITING)
    if msg.seq <= c.ack_floor_seq:
        return replace(base, state=ACKED)
    if msg.seq <= c.delivered_seq:
        return replace(base, state=DELIVERED)
    return base


def with_ahead(verdict: ConsumerVerdict, c: ConsumerFacts, pending_from_seq: int
               ) -> ConsumerVerdict:
    """Fill in how many messages are ahead of a :data:`WAITING` one, given how many
    messages of the consumer's subjects the stream holds from its sequence on (it
    included): the consumer's undelivered ones before it, plus those it delivered that
    are not acknowledged yet."""
    before = max(0, c.num_pending - pending_from_seq)
    return replace(verdict, undelivered_before=before, ahead=before + c.num_ack_pending)


@dataclass(slots=True)
class EventTrace:
    facts: EventFacts
    consumers: list[ConsumerVerdict] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return event_verdict(self)


def event_verdict(t: EventTrace) -> str:
    f = t.facts
    if f.dead_letters or any(c.state == DEAD for c in t.consumers):
        return V_DEAD
    if f.stored is None:
        return V_PENDING
    if any(c.in_flight for c in t.consumers):
        return V_IN_FLIGHT
    return V_DONE


_EXITS = {V_DEAD: EXIT_DEAD_LETTERED, V_PENDING: EXIT_IN_FLIGHT, V_IN_FLIGHT: EXIT_IN_FLIGHT,
          V_DONE: EXIT_DONE}


def exit_code(traces: Sequence[EventTrace], nats_unreachable: bool = False) -> int:
    """The command's exit code: nothing found is :data:`EXIT_NOT_FOUND` (or
    :data:`EXIT_UNKNOWN` when NATS could not be asked); else the worst of the events,
    dead-lettered before in flight before done."""
    if not traces:
        return EXIT_UNKNOWN if nats_unreachable else EXIT_NOT_FOUND
    codes = {_EXITS[t.verdict] for t in traces}
    for code in (EXIT_DEAD_LETTERED, EXIT_IN_FLIGHT):
        if code in codes:
            return code
    return EXIT_DONE


# -- output --------------------------------------------------------------------------------


def iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class TraceReport:
    query: TraceQuery
    events: list[EventTrace]
    stream: str
    #: Facts that could not be learned, and why (NATS down, outbox unreadable, ...).
    notes: list[str] = field(default_factory=list)
    nats_unreachable: bool = False
    #: ``False``: the outbox could not be read (its pending state is unknown).
    outbox_read: bool = True

    @property
    def exit_code(self) -> int:
        return exit_code(self.events, self.nats_unreachable)


def _outbox_state(t: EventTrace, report: TraceReport) -> str:
    f = t.facts
    if f.outbox is not None:
        return "published" if f.stored is not None else "pending"
    if f.stored is not None:
        return "published"
    if any(dead_letter_kind(d.headers) != "consumer" for d in f.dead_letters):
        return "dead_lettered"
    return "removed" if report.outbox_read else "unknown"


def _dead_letter_json(d: StoredMsg) -> dict[str, Any]:
    h = d.headers
    deliveries = h.get(DELIVERIES)
    return {"by": dead_letter_kind(h), "consumer": h.get(CONSUMER), "reason": h.get(REASON, ""),
            "stream": d.stream, "seq": d.seq, "subject": d.subject, "time": iso_ms(d.time_ms),
            "original_subject": h.get(ORIGINAL_SUBJECT),
            "deliveries": int(deliveries) if deliveries and deliveries.isdigit() else None}


def event_json(t: EventTrace, report: TraceReport) -> dict[str, Any]:
    f = t.facts
    source = dict(f.body.source) if f.body.source else None
    return {
        "id": f.id, "subject": f.subject, "op": f.body.op,
        "key": dict(f.body.key) if f.body.key is not None else None,
        "verdict": t.verdict, "exit_code": _EXITS[t.verdict],
        "source": source,
        "source_time": iso_ms(source.get("ts_ms")) if source and isinstance(
            source.get("ts_ms"), int) else None,
        "outbox": {"state": _outbox_state(t, report),
                   "seq": f.outbox.seq if f.outbox else None,
                   "captured_at": iso_ms(f.outbox.created_ms) if f.outbox else None},
        "stream": None if f.stored is None else {
            "name": f.stored.stream, "seq": f.stored.seq, "time": iso_ms(f.stored.time_ms)},
        "consumers": [{"name": c.name, "state": c.state, "filters": list(c.filters),
                       "delivered_seq": c.delivered_seq, "ack_floor_seq": c.ack_floor_seq,
                       "ahead": c.ahead, "undelivered_before": c.undelivered_before,
                       "ack_pending": c.ack_pending, "reason": c.reason}
                      for c in t.consumers],
        "dead_letters": [_dead_letter_json(d) for d in f.dead_letters],
    }


def report_json(report: TraceReport) -> dict[str, Any]:
    """The ``--json`` object: the same facts as the text, plus the exit code."""
    return {"query": report.query.as_dict(), "stream": report.stream,
            "found": bool(report.events), "exit_code": report.exit_code,
            "notes": list(report.notes),
            "events": [event_json(t, report) for t in report.events]}


def _consumer_line(c: ConsumerVerdict) -> str:
    if c.state == ACKED:
        what = f"acknowledged (ack floor {c.ack_floor_seq})"
    elif c.state == DELIVERED_NO_ACK:
        what = "delivered (this consumer takes no acks)"
    elif c.state == DELIVERED:
        what = (f"delivered, not acknowledged yet (ack floor {c.ack_floor_seq}, "
                f"{c.ack_pending} awaiting ack)")
    elif c.state == WAITING:
        n = "?" if c.ahead is None else str(c.ahead)
        what = f"not yet delivered, {n} message{'' if c.ahead == 1 else 's'} ahead of it"
        if c.ahead and c.undelivered_before is not None:
            what += f" ({c.undelivered_before} undelivered, {c.ack_pending} awaiting ack)"
    elif c.state == NOT_FOR:
        what = f"not for this consumer (filter {', '.join(c.filters)})"
    elif c.state == BEFORE_START:
        what = "stored before this consumer's start: not for it"
    else:
        what = f"dead-lettered: {c.reason}"
    return f"  consumer  {c.name}: {what}"


def _dead_letter_line(d: StoredMsg) -> str:
    j = _dead_letter_json(d)
    n = j["deliveries"]
    who = {"consumer": f"by consumer {j['consumer']}"
                       + (f" after {n} deliver{'y' if n == 1 else 'ies'}" if n else ""),
           "relay": "by the relay (the stream refused it)",
           "capture": "at capture (the source could not turn it into an event)"}[j["by"]]
    return (f"  dead      {j['time']}  dead-lettered {who}: {j['reason']} "
            f"({d.stream} seq {d.seq}, {d.subject})")


_VERDICT_TEXT = {
    V_DONE: "done: stored, every durable consumer it is for has acknowledged it",
    V_IN_FLIGHT: "in flight: stored, not acknowledged by every consumer yet",
    V_PENDING: "in flight: pending in the outbox, not published yet",
    V_DEAD: "dead-lettered",
}


def render_event(t: EventTrace, report: TraceReport) -> list[str]:
    """The timeline of one event: one line per stage, with its time."""
    j = event_json(t, report)
    f = t.facts
    key = "" if j["key"] is None else " key " + json.dumps(j["key"], separators=(",", ":"))
    lines = [f"event {f.id}  {f.subject}{' op ' + j['op'] if j['op'] else ''}{key}"]
    src = j["source"]
    if src:
        where = f"position {src.get('position')}"
        if src.get("index"):
            where += f" #{src['index']}"
        extra = {k: v for k, v in src.items()
                 if k not in ("adapter", "schema", "table", "position", "index", "ts_ms")
                 and v is not None}
        extras = "".join(f" {k}={_text(v)}" for k, v in extra.items())
        lines.append(f"  source    {j['source_time'] or '-'}  {src.get('adapter')} "
                     f"{where}{extras}")
    o = j["outbox"]
    outbox_text = {
        "pending": f"captured, pending in the outbox (outbox seq {o['seq']}): "
                   "not published yet",
        "published": "published" + (f" (outbox seq {o['seq']}, row not removed yet)"
                                    if o["seq"] else "; its row was removed"),
        "dead_lettered": "dead-lettered by the bridge; its row was removed",
        "removed": "not in the outbox",
        "unknown": "outbox not read",
    }[o["state"]]
    lines.append(f"  outbox    {o['captured_at'] or '-'}  {outbox_text}")
    s = j["stream"]
    if s:
        lines.append(f"  stream    {s['time']}  stored in {s['name']} at sequence {s['seq']}")
    else:
        lines.append(f"  stream    -  not in {report.stream}"
                     + (" (NATS not reachable)" if report.nats_unreachable else ""))
    if s and not t.consumers and not report.nats_unreachable:
        lines.append("  consumer  (the stream has no durable consumers)")
    lines.extend(_consumer_line(c) for c in t.consumers)
    lines.extend(_dead_letter_line(d) for d in f.dead_letters)
    lines.append(f"  => {_VERDICT_TEXT[t.verdict]} (exit {_EXITS[t.verdict]})")
    return lines


def render_text(report: TraceReport) -> str:
    lines: list[str] = []
    for t in report.events:
        if lines:
            lines.append("")
        lines.extend(render_event(t, report))
    if not report.events:
        q = report.query
        what = (f"event {q.event_id}" if q.event_id is not None else
                f"an event of adapter {q.adapter}, table {q.table}"
                + ("" if q.schema is None else f" (schema {q.schema})")
                + ("" if q.key is None else " with key " + json.dumps(dict(q.key))))
        if report.nats_unreachable:
            lines.append(f"cannot tell: {what} is not in the outbox, and NATS is not "
                         f"reachable (exit {EXIT_UNKNOWN})")
        else:
            lines.append(f"not found: {what} (not in the outbox, {report.stream} or its "
                         f"dead letters; exit {EXIT_NOT_FOUND})")
    lines.extend(f"note: {n}" for n in report.notes)
    return "\n".join(lines)
