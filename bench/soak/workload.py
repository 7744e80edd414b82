"""The soak's known, checkable workload: a pure model of what every writer did.

Each source table holds rows ``(id, v, payload)``. Every change to a key carries a
version ``v`` that only grows for that key, across deletes and re-inserts, so any change
can be recognised in the stream by ``(op, key, v)``:

- a key that is absent gets an insert (``c``) with the next version;
- a present key gets an update (``u``, next version) or, with ``delete_ratio``, a
  delete (``d``, carrying the version it removes).

:class:`KeySpace` proposes transactions (:meth:`KeySpace.propose`) without changing
anything; the writer runs them against the database and calls :meth:`KeySpace.commit`
only once the database said COMMIT succeeded. Its ``history`` is then exactly what the
source saw, in commit order, which the verifier compares with the stream.
:class:`AppendLog` is the same for append-only tables (inserts with increasing ids).

Everything is seeded (one ``random.Random`` per writer) and free of I/O.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field

PAYLOAD_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 éß✓"


@dataclass(frozen=True, slots=True)
class Change:
    op: str  # "c" | "u" | "d"
    key: int
    v: int
    payload: str = ""


@dataclass(slots=True)
class KeySpace:
    """A range of keys of one table, their current state and full change history."""

    rng: random.Random
    n_keys: int
    delete_ratio: float = 0.15
    #: Keys are ``first_key .. first_key + n_keys - 1`` (writers sharing a table get
    #: disjoint ranges, so each key has exactly one writer and one commit order).
    first_key: int = 1
    history: dict[int, list[Change]] = field(default_factory=dict)
    state: dict[int, int] = field(default_factory=dict)  # key -> current v (absent: missing)
    last_v: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def propose(self, size: int) -> list[Change]:
        """A transaction of ``size`` changes on distinct keys (nothing is applied yet)."""
        keys = self.rng.sample(range(self.first_key, self.first_key + self.n_keys),
                               min(size, self.n_keys))
        out = []
        for key in keys:
            v = self.last_v.get(key, 0) + 1
            if key not in self.state:
                out.append(Change("c", key, v, self._payload()))
            elif self.rng.random() < self.delete_ratio:
                out.append(Change("d", key, self.state[key]))
            else:
                out.append(Change("u", key, v, self._payload()))
        return out

    def commit(self, changes: list[Change]) -> None:
        """Record a transaction the database has committed."""
        with self.lock:
            for ch in changes:
                self.history.setdefault(ch.key, []).append(ch)
                if ch.op == "d":
                    self.state.pop(ch.key, None)
                else:
                    self.state[ch.key] = ch.v
                    self.last_v[ch.key] = ch.v

    @property
    def changes_written(self) -> int:
        return sum(len(h) for h in self.history.values())

    def _payload(self) -> str:
        n = self.rng.randint(4, 60)
        return "".join(self.rng.choice(PAYLOAD_ALPHABET) for _ in range(n))


@dataclass(slots=True)
class AppendLog:
    """An append-only table: ids ``1, 2, ...`` inserted once each, in commit order."""

    next_id: int = 1
    written: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def propose(self, size: int) -> list[int]:
        return list(range(self.next_id, self.next_id + size))

    def commit(self, ids: list[int]) -> None:
        with self.lock:
            self.written.extend(ids)
            self.next_id = ids[-1] + 1 if ids else self.next_id

    def history(self) -> dict[int, list[Change]]:
        with self.lock:
            return {i: [Change("c", i, 1)] for i in self.written}

    def state(self) -> dict[int, int]:
        with self.lock:
            return dict.fromkeys(self.written, 1)


def merged_history(*spaces: KeySpace) -> dict[int, list[Change]]:
    """Histories of key spaces with disjoint keys that share one table."""
    out: dict[int, list[Change]] = {}
    for space in spaces:
        out.update(space.history)
    return out


def merged_state(*spaces: KeySpace) -> dict[int, int]:
    out: dict[int, int] = {}
    for space in spaces:
        out.update(space.state)
    return out
