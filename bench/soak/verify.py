"""Compare what the stream holds with what the writers did: pure, no I/O.

Input: the stream's messages for one source table (in stream order), the writer's
per-key history (:mod:`bench.soak.workload`), and the table's final contents read from
the source at the end. Each delivered change becomes a *state* of its key: present with
version ``v`` (``c``/``u``/``r``) or absent after removing ``v`` (``d``). The expected
states are the history's states, in commit order. Walking both per key:

- a delivered state equal to the next expected one (or a later one) advances; expected
  states jumped over are **lost** for an ``exact`` source (log-based: every change must
  arrive) and merely **collapsed** for a ``state`` source (a poller cannot see states
  that lived between two polls);
- a delivered state equal to the one just matched is a **duplicate** (so is a repeated
  event id anywhere in the stream);
- a delivered state equal to an earlier expected one is **out of order**;
- a delivered state that never existed is **unexpected**;
- finally the last delivered state must equal the source's final state (a key that is
  absent at the end may also never have been delivered, for a ``state`` source, whose
  deletes are matched without their version: a poller's delete carries the last state
  it saw, which may be older than the state actually deleted):
  otherwise it counts as a **final mismatch** and, for a ``state`` source, as lost.

**Table resets** (``t`` events: a PostgreSQL table re-created or taken out of its
publication and put back by the bridge, ``recreate:table`` and ``alter:publication``).
The ``i``-th ``t`` of a table is matched with the ``i``-th :class:`ResetWindow` the
fault recorded: ``lo``, how many changes of each key the writers had committed before
the DDL, and ``hi``, how many when the ``t`` was seen in the stream. Changes committed
between the DDL and the bridge's reset message were never in the publication: they
reach the stream only through the re-snapshot's ``r`` rows, as the table's state. So,
per key:

- every change before the window (index ``< lo``) must have arrived before the ``t``
  (else **lost**), exactly once and in order as everywhere;
- the ``t`` empties the folded state (a key deleted meanwhile gets no ``d``);
- the first change of the key after the ``t`` (live, or its ``r``) may skip changes
  inside the window: they are **collapsed** into the re-snapshot; skipping a change
  committed after the window is **lost**;
- from then on every change must arrive exactly once and in order; the key's one ``r``
  may repeat the state of a live change just before it (the re-snapshot read it after
  that change): that is not a duplicate, a second ``r`` of it is;
- the last folded state must equal the source (so a key that existed before the ``t``
  and not after must not be in the source any more).

The leniency is bounded by the window: a change committed in the milliseconds between
the driver reading the writers' models and the DDL's commit, or between the reset
message's commit and the driver seeing its ``t``, is excused if missing. A ``t`` without
a window counts as **unexpected** and resets the state (its absence of ``r`` rows then
shows as final mismatches).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.soak.workload import Change

#: (present?, v); v may be None for a delete whose ``before`` carries only the key.
State = tuple[bool, int | None]


@dataclass(slots=True)
class Delivered:
    """One change as found in the stream."""

    seq: int
    event_id: str
    op: str
    key: int | None  # None for a table's ``t``
    v: int | None


@dataclass(frozen=True, slots=True)
class ResetWindow:
    """Where a table reset happened in the writers' histories (module docstring): per
    key, the number of its changes committed before the DDL (``lo``) and by the time
    its ``t`` was in the stream (``hi``); a key missing counts as 0."""

    kind: str
    lo: Mapping[int, int]
    hi: Mapping[int, int]


@dataclass(slots=True)
class TableResult:
    label: str
    mode: str  # "exact" | "state"
    written: int = 0
    delivered: int = 0
    lost: int = 0
    collapsed: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unexpected: int = 0
    final_mismatch: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order or self.unexpected
                    or self.final_mismatch)

    def note(self, text: str) -> None:
        if len(self.examples) < 8:
            self.examples.append(text)


def delivered_change(seq: int, body: Mapping[str, Any]) -> Delivered | None:
    """Read ``(op, key id, v)`` out of a CloudEvent body; None if it is not a change."""
    data = body.get("data")
    if not isinstance(data, dict) or data.get("op") not in ("c", "u", "d", "r", "t"):
        return None
    op = str(data["op"])
    if op == "t":
        return Delivered(seq, str(body.get("id")), op, None, None)
    row = data.get("before") if op == "d" else data.get("after")
    key = data.get("key") or {}
    raw_id = key.get("id") if isinstance(key, dict) else None
    if raw_id is None and isinstance(row, dict):
        raw_id = row.get("id")
    if raw_id is None:
        return None
    v = row.get("v") if isinstance(row, dict) else None
    return Delivered(seq, str(body.get("id")), op, int(raw_id), None if v is None else int(v))


def _state_of(op: str, v: int | None, mode: str = "exact") -> State:
    if op == "d" and mode == "state":
        # a poller's delete carries the last state it saw, maybe older than the deleted one
        return (False, None)
    return (op != "d", v)


def _same(a: State, b: State) -> bool:
    return a[0] == b[0] and (a[1] is None or b[1] is None or a[1] == b[1])


def verify_table(label: str, mode: str, history: Mapping[int, list[Change]],
                 delivered: Iterable[Delivered], final: Mapping[int, int],
                 resets: Sequence[ResetWindow] = ()) -> TableResult:
    """Check one table; see the module docstring for the rules."""
    res = TableResult(label, mode)
    res.written = sum(len(h) for h in history.values())
    #: key -> its deliveries, each tagged with how many ``t`` came before it
    per_key: dict[int, list[tuple[int, Delivered]]] = {}
    ids: Counter[str] = Counter()
    n_resets = 0
    for d in delivered:
        ids[d.event_id] += 1
        res.delivered += 1
        if d.key is None:
            n_resets += 1
        else:
            per_key.setdefault(d.key, []).append((n_resets, d))
    for event_id, n in ids.items():
        if n > 1:
            res.duplicated += n - 1
            res.note(f"event id {event_id} stored {n} times")
    if n_resets > len(resets):
        res.unexpected += n_resets - len(resets)
        res.note(f"{n_resets} t event(s), {len(resets)} table reset(s) made by the soak")
    elif n_resets < len(resets):
        res.note(f"{len(resets)} table reset(s) made, only {n_resets} t event(s) delivered")
    for key in sorted(set(history) | set(per_key)):
        windows = [(w.lo.get(key, 0), w.hi.get(key, 0)) for w in resets[:n_resets]]
        windows += [None] * (n_resets - len(windows))
        _verify_key(res, key, history.get(key, []), per_key.get(key, []), windows,
                    final.get(key))
    return res


@dataclass(slots=True)
class _Walk:
    """One key's walk through its expected states (see :func:`_verify_key`)."""

    res: TableResult
    key: int
    expected: list[State]
    pos: int = -1  # index of the last matched expected state
    last: State | None = None  # the folded state: the last one delivered (since a reset)
    #: After a reset and before the key's first delivery since: skips of indices below
    #: this are collapsed into the re-snapshot (-1: none excused).
    excused_below: int = -1
    r_since_reset: bool = True  # the key's re-snapshot ``r`` may repeat a state once

    def skip(self, upto: int, what: str) -> None:
        """Expected states ``pos + 1 .. upto - 1`` were not delivered."""
        excused = max(0, min(upto, self.excused_below) - self.pos - 1)
        missing = max(0, upto - self.pos - 1) - excused
        self.res.collapsed += excused
        if self.res.mode == "exact":
            self.res.lost += missing
            if missing:
                self.res.note(f"key {self.key}: {missing} change(s) missing {what}")
        else:
            self.res.collapsed += missing

    def reset(self, window: tuple[int, int] | None) -> None:
        """A ``t``: what came before the window must be in; the folded state empties."""
        lo, hi = window if window is not None else (self.pos + 1, self.pos + 1)
        if self.pos < lo - 1:  # (nothing since an earlier reset: its window still excuses)
            self.skip(lo, "before the table's t")
            self.pos = lo - 1
        self.excused_below = hi
        self.last = (False, None)
        self.r_since_reset = False


def _verify_key(res: TableResult, key: int, changes: list[Change],
                got: list[tuple[int, Delivered]], windows: list[tuple[int, int] | None],
                final_v: int | None) -> None:
    walk = _Walk(res, key, [_state_of(c.op, c.v) for c in changes])
    expected = walk.expected
    seen_ids: set[str] = set()
    applied = 0  # resets applied so far
    for epoch, d in got:
        while applied < epoch:
            walk.reset(windows[applied])
            applied += 1
        if d.event_id in seen_ids:
            continue  # counted once already as a repeated id
        seen_ids.add(d.event_id)
        state = _state_of(d.op, d.v, res.mode)
        first_r = d.op == "r" and not walk.r_since_reset
        if first_r:
            walk.r_since_reset = True
        start = walk.pos if first_r and walk.pos >= 0 else walk.pos + 1
        nxt = next((i for i in range(start, len(expected)) if _same(expected[i], state)), None)
        if nxt is not None:
            walk.skip(nxt, f"before {d.op} v={d.v}")
            walk.pos, walk.last, walk.excused_below = nxt, state, -1
        elif walk.pos >= 0 and _same(expected[walk.pos], state):
            res.duplicated += 1
            res.note(f"key {key}: {d.op} v={d.v} delivered again (seq {d.seq})")
        elif any(_same(e, state) for e in expected[: max(walk.pos, 0)]):
            res.out_of_order += 1
            res.note(f"key {key}: {d.op} v={d.v} arrived after a later change (seq {d.seq})")
        else:
            res.unexpected += 1
            res.note(f"key {key}: {d.op} v={d.v} never written (seq {d.seq})")
    while applied < len(windows):
        walk.reset(windows[applied])
        applied += 1
    if res.mode == "exact" and walk.pos < len(expected) - 1:
        walk.skip(len(expected), "at the end (never delivered)")
    _check_final(res, key, expected, walk.last, final_v)


def _check_final(res: TableResult, key: int, expected: list[State], last: State | None,
                 final_v: int | None) -> None:
    source: State = (True, final_v) if final_v is not None else (False, None)
    model: State = expected[-1] if expected else (False, None)
    if not _same(model, source):
        res.final_mismatch += 1
        res.note(f"key {key}: writer model {model} differs from source {source}")
        return
    reached = (not source[0] and res.mode == "state") if last is None else _same(last, source)
    if not reached:
        res.final_mismatch += 1
        if res.mode == "state":
            res.lost += 1
        res.note(f"key {key}: stream ends at {last}, source holds {source}")
