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
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
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
    key: int
    v: int | None


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
    if not isinstance(data, dict) or data.get("op") not in ("c", "u", "d", "r"):
        return None
    op = str(data["op"])
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
                 delivered: Iterable[Delivered], final: Mapping[int, int]) -> TableResult:
    """Check one table; see the module docstring for the rules."""
    res = TableResult(label, mode)
    res.written = sum(len(h) for h in history.values())
    per_key: dict[int, list[Delivered]] = {}
    ids: Counter[str] = Counter()
    for d in delivered:
        per_key.setdefault(d.key, []).append(d)
        ids[d.event_id] += 1
        res.delivered += 1
    for event_id, n in ids.items():
        if n > 1:
            res.duplicated += n - 1
            res.note(f"event id {event_id} stored {n} times")
    for key in sorted(set(history) | set(per_key)):
        _verify_key(res, key, history.get(key, []), per_key.get(key, []), final.get(key))
    return res


def _verify_key(res: TableResult, key: int, changes: list[Change], got: list[Delivered],
                final_v: int | None) -> None:
    expected = [_state_of(c.op, c.v) for c in changes]
    pos = -1  # index of the last matched expected state
    seen_ids: set[str] = set()
    last: State | None = None
    for d in got:
        if d.event_id in seen_ids:
            continue  # counted once already as a repeated id
        seen_ids.add(d.event_id)
        state = _state_of(d.op, d.v, res.mode)
        nxt = next((i for i in range(pos + 1, len(expected)) if _same(expected[i], state)), None)
        if nxt is not None:
            skipped = nxt - pos - 1
            if res.mode == "exact":
                res.lost += skipped
                if skipped:
                    res.note(f"key {key}: {skipped} change(s) missing before {d.op} v={d.v}")
            else:
                res.collapsed += skipped
            pos, last = nxt, state
        elif pos >= 0 and _same(expected[pos], state):
            res.duplicated += 1
            res.note(f"key {key}: {d.op} v={d.v} delivered again (seq {d.seq})")
        elif any(_same(e, state) for e in expected[: max(pos, 0)]):
            res.out_of_order += 1
            res.note(f"key {key}: {d.op} v={d.v} arrived after a later change (seq {d.seq})")
        else:
            res.unexpected += 1
            res.note(f"key {key}: {d.op} v={d.v} never written (seq {d.seq})")
    tail = len(expected) - pos - 1
    if res.mode == "exact" and tail > 0:
        res.lost += tail
        res.note(f"key {key}: last {tail} change(s) never delivered")
    _check_final(res, key, expected, last, final_v)


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
