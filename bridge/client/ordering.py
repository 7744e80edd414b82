"""Pure bookkeeping of per-key order for :mod:`cdc_bridge.client.consumer` (no I/O).

Two structures, both per consumer instance:

* :class:`KeyQueues` — the messages this instance holds, one queue per order key, each
  ordered by stream sequence. One worker per key takes the lowest sequence, so a key
  never runs two handlers at once here and a redelivered earlier message overtakes a
  later one still waiting.
* :class:`KeyIndex` — what this instance knows of the stream above the consumer's ack
  floor: stream sequence -> order key for every message of the filter it has seen,
  and the gaps it has not (messages other instances took, or that do not match the
  filter). :meth:`KeyIndex.predecessor` answers "the latest earlier message of this key
  that may still be unapplied" once the gaps below a sequence are filled in
  (:meth:`KeyIndex.gaps_between` says which; the consumer reads them from the stream).

And the pruning cutoffs (:func:`seen_cutoff_ms`).
"""

from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class KeyQueues(Generic[T]):
    """Held messages by order key, each key's queue a heap on stream sequence."""

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[int, int]]] = {}
        self._items: dict[str, dict[int, T]] = {}
        self._held = 0
        self._tie = 0

    def add(self, key: str, seq: int, item: T) -> bool:
        """Hold ``item``; a second delivery of ``seq`` replaces the first. ``True`` if the
        key had nothing held (it needs a worker)."""
        items = self._items.setdefault(key, {})
        fresh = not items
        if seq in items:
            items[seq] = item
            return fresh
        items[seq] = item
        self._tie += 1
        heapq.heappush(self._heaps.setdefault(key, []), (seq, self._tie))
        self._held += 1
        return fresh

    def head(self, key: str) -> tuple[int, T] | None:
        """The lowest sequence held for ``key`` and its item."""
        heap = self._heaps.get(key)
        items = self._items.get(key)
        while heap and items is not None and heap[0][0] not in items:
            heapq.heappop(heap)  # removed out of order earlier
        if not heap or items is None:
            return None
        seq = heap[0][0]
        return seq, items[seq]

    def remove(self, key: str, seq: int) -> None:
        items = self._items.get(key)
        if items is None or seq not in items:
            return
        del items[seq]
        self._held -= 1
        if not items:
            del self._items[key]
            self._heaps.pop(key, None)

    def depth(self, key: str) -> int:
        return len(self._items.get(key, ()))

    @property
    def held(self) -> int:
        return self._held

    @property
    def keys(self) -> int:
        return len(self._items)

    def deepest(self) -> int:
        return max((len(v) for v in self._items.values()), default=0)

    def all_items(self) -> list[T]:
        return [item for items in self._items.values() for item in items.values()]


class KeyIndex:
    """Stream sequence -> order key above the ack floor, as far as this instance knows.

    Everything at or below :attr:`floor` is acknowledged (the consumer's ack floor) and
    forgotten. Above it, up to :attr:`top`, every sequence is either known (recorded,
    with its key, or ``None`` for a message without one) or inside a gap.
    """

    def __init__(self, floor: int = 0) -> None:
        self.floor = floor
        self.top = floor
        self._key_of: dict[int, str | None] = {}
        self._by_key: dict[str, list[int]] = {}
        self._gaps: list[list[int]] = []  # sorted, disjoint, inclusive [a, b]

    def record(self, seq: int, key: str | None) -> None:
        """A message of the filter at ``seq`` (from a fetch or a gap read)."""
        if seq <= self.floor:
            return
        if seq > self.top:
            if seq > self.top + 1:
                self._gaps.append([self.top + 1, seq - 1])
            self.top = seq
        else:
            self._cut(seq, seq)
        if seq in self._key_of:
            return
        self._key_of[seq] = key
        if key is not None:
            bisect.insort(self._by_key.setdefault(key, []), seq)

    def known_empty(self, first: int, last: int) -> None:
        """``first..last`` holds no further message of the filter than those recorded."""
        self._cut(first, last)

    def _cut(self, first: int, last: int) -> None:
        out: list[list[int]] = []
        for a, b in self._gaps:
            if b < first or a > last:
                out.append([a, b])
                continue
            if a < first:
                out.append([a, first - 1])
            if b > last:
                out.append([last + 1, b])
        self._gaps = out

    def gaps_between(self, low: int, seq: int) -> list[tuple[int, int]]:
        """Unknown ranges strictly between ``low`` and ``seq``."""
        out = []
        for a, b in self._gaps:
            first, last = max(a, low + 1), min(b, seq - 1)
            if first <= last:
                out.append((first, last))
        return out

    def predecessor(self, key: str, seq: int, low: int) -> int | None:
        """The latest known sequence of ``key`` strictly between ``low`` and ``seq``."""
        seqs = self._by_key.get(key)
        if not seqs:
            return None
        i = bisect.bisect_left(seqs, seq)
        if i == 0 or seqs[i - 1] <= max(low, self.floor):
            return None
        return seqs[i - 1]

    def advance_floor(self, floor: int) -> None:
        """The consumer's ack floor moved: forget everything at or below it."""
        if floor <= self.floor:
            return
        self.floor = floor
        self.top = max(self.top, floor)
        for s in [s for s in self._key_of if s <= floor]:
            key = self._key_of.pop(s)
            if key is not None:
                seqs = self._by_key[key]
                del seqs[:bisect.bisect_right(seqs, floor)]
                if not seqs:
                    del self._by_key[key]
        self._cut(0, floor)

    def __len__(self) -> int:
        return len(self._key_of)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long seen ids are kept, and why."""

    seconds: float | None
    source: str


def seen_retention(setting_s: float | None, stream_max_age_s: float,
                   duplicate_window_s: float = 0.0) -> Retention:
    """The seen-store's retention: the setting if given, else the stream's ``max_age``
    plus its duplicate window (a message older than that is no longer in the stream, so
    it cannot be delivered again), else none (a stream without an age limit: keep all).
    """
    if setting_s is not None:
        return Retention(setting_s if setting_s > 0 else None, "setting")
    if stream_max_age_s > 0:
        return Retention(stream_max_age_s + duplicate_window_s, "stream max_age")
    return Retention(None, "stream has no max_age")


def seen_cutoff_ms(now_ms: int, retention: Retention) -> int | None:
    """Seen ids (and key positions) recorded before this are pruned; ``None``: keep all."""
    if retention.seconds is None:
        return None
    return now_ms - int(retention.seconds * 1000)
