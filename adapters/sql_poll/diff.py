"""Pure row diffing: one chunk of source rows against the stored state of the same keys.

Input: the chunk's rows as ``(key_text, hash, image_bytes)`` and what the state holds
for those keys. Output: the changes (``c``/``r`` for keys unknown or tombstoned, ``u``
for a different hash, with the stored image as ``before``) and the state writes. Deletes
are not found here (a deleted key is absent from every chunk); the sweep after a pass
turns unseen keys into :func:`deletes`. No I/O, so it is unit-tested and fuzzed alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cdc_bridge.adapters.sql_poll.diff_state import Stored, Write


@dataclass(frozen=True, slots=True)
class SourceRow:
    key: str
    hash: bytes
    image: bytes


@dataclass(frozen=True, slots=True)
class Change:
    op: str  # "c" (or "r" in a snapshot pass), "u", "d"
    key: str
    before: bytes | None
    after: bytes | None


def diff_chunk(rows: Sequence[SourceRow], stored: Mapping[str, Stored], *,
               insert_op: str = "c", keep_images: bool = True
               ) -> tuple[list[Change], list[Write]]:
    changes: list[Change] = []
    writes: list[Write] = []
    for row in rows:
        old = stored.get(row.key)
        image = row.image if keep_images else None
        if old is None or old.hash is None:
            changes.append(Change(insert_op, row.key, None, row.image))
        elif old.hash != row.hash:
            changes.append(Change("u", row.key, old.image, row.image))
        else:
            continue
        writes.append(Write(row.key, row.hash, image))
    return changes, writes


def snapshot_chunk(rows: Sequence[SourceRow], stored: Mapping[str, Stored], *,
                   keep_images: bool = True) -> tuple[list[Change], list[Write]]:
    """A re-snapshot pass: every row is an ``r``; the state learns what changed."""
    changes = [Change("r", row.key, None, row.image) for row in rows]
    writes = [Write(row.key, row.hash, row.image if keep_images else None) for row in rows
              if (old := stored.get(row.key)) is None or old.hash != row.hash]
    return changes, writes


def deletes(unseen: Sequence[tuple[str, Stored]]) -> tuple[list[Change], list[Write]]:
    changes = [Change("d", key, old.image, None) for key, old in unseen]
    writes = [Write(key, None, None) for key, _ in unseen]
    return changes, writes
