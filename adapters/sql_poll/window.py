"""The look-back window of the cursor modes: re-read recent rows, emit each version once.

Kafka Connect's JDBC source keeps only "the highest cursor seen", so a transaction that
commits after a row with a higher id or timestamp was polled is skipped forever. Here a
poll re-reads every row above a *base* that trails the highest cursor by ``lag_window``
seconds of wall time: after each poll we note ``(now, highest cursor)`` as a *sample*,
and the base becomes the highest cursor of the newest sample at least ``lag_window``
old. Rows read again are recognised by a fingerprint of their version (key, cursor and,
in the timestamp modes, the row's hash) kept in ``seen`` while their cursor is above
the base, so each version is emitted once.

``seen`` travels in the checkpoint (committed with the events), so it is bounded by
``max_rows``: when more rows than that lie in the window, the base is moved up to the
oldest row kept (to
3/4 of the bound at once). The guarantee is therefore: a row is caught if it commits within
``lag_window`` of being overtaken *and* within ``max_rows`` rows of the cursor.

Cost. :meth:`Window.to_json` runs for every page (the window is in every batch's
checkpoint), so it must not re-encode up to ``max_rows`` cursors each time: each cursor
is encoded once, when it enters ``seen`` or ``samples``, and kept beside it; ``to_json``
turns ``seen`` into one JSON string with orjson (C speed), so the outbox store then
writes a single string instead of walking thousands of small lists. Cursors are
compared as Python tuples (the same lexicographic order as
:func:`~cdc_bridge.adapters.sql_poll.values.compare_cursor`, in C).

Pure state and arithmetic on decoded cursors; no I/O, no clock (``now_ms`` is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from cdc_bridge.adapters.sql_poll.values import Cursor, decode_cursor, encode_cursor


@dataclass(slots=True)
class Window:
    #: Exclusive lower bound of the next re-read (``None``: from the start of the table).
    base: Cursor | None = None
    #: Highest cursor emitted so far.
    top: Cursor | None = None
    samples: list[tuple[int, Cursor]] = field(default_factory=list)
    #: fingerprint -> cursor of the row versions emitted above ``base``.
    seen: dict[str, Cursor] = field(default_factory=dict)
    #: Rows dropped from ``seen`` because of ``max_rows`` (for a warning).
    shortened: int = 0
    #: The JSON form of ``seen``'s cursors (same keys) and of ``samples`` (same order).
    _seen_json: dict[str, Any] = field(default_factory=dict, repr=False)
    _samples_json: list[list[Any]] = field(default_factory=list, repr=False)

    def advance(self, now_ms: int, lag_ms: int) -> None:
        """Move the base to the highest cursor seen at least ``lag_ms`` ago."""
        cut = now_ms - lag_ms
        for at_ms, cursor in self.samples:
            if at_ms <= cut:
                self._raise_base(cursor)
        self._prune()

    def note_poll(self, now_ms: int) -> None:
        """Record the highest cursor as of ``now_ms`` (once per poll)."""
        top = self.top
        if top is None:
            return
        if self.samples and self.samples[-1][1] >= top:
            return
        self.samples.append((now_ms, top))
        self._samples_json.append([now_ms, encode_cursor(top)])

    def is_seen(self, fp: str) -> bool:
        return fp in self.seen

    def emitted(self, cursor: Cursor, fp: str | None, max_rows: int) -> None:
        """A row version was emitted; remember it while it can be read again."""
        if self.top is None or cursor > self.top:
            self.top = cursor
        if fp is None or max_rows == 0:
            self._raise_base(self.top)
            return
        self.seen[fp] = cursor
        self._seen_json[fp] = encode_cursor(cursor)
        if len(self.seen) > max_rows:
            self._shorten(max_rows)

    def _shorten(self, max_rows: int) -> None:
        # drop to 3/4 of the bound at once, so the sort is paid once per max_rows/4 rows
        ordered = sorted(self.seen.values())
        keep = max(max_rows * 3 // 4, 1)
        drop_to = ordered[len(ordered) - keep - 1]
        before = len(self.seen)
        self._raise_base(drop_to)
        self._prune()
        self.shortened += before - len(self.seen)

    def _raise_base(self, cursor: Cursor) -> None:
        if self.base is None or cursor > self.base:
            self.base = cursor

    def _prune(self) -> None:
        base = self.base
        if base is None:
            return
        seen, seen_json = self.seen, self._seen_json
        if any(c <= base for c in seen.values()):
            self.seen = {fp: c for fp, c in seen.items() if c > base}
            self._seen_json = {fp: seen_json[fp] for fp in self.seen}
        if self.samples and self.samples[0][1] <= base:
            kept = [i for i, (_, c) in enumerate(self.samples) if c > base]
            self.samples = [self.samples[i] for i in kept]
            self._samples_json = [self._samples_json[i] for i in kept]

    def to_json(self) -> dict[str, Any]:
        # ``seen`` (up to ``max_rows`` entries) as one JSON text of {fingerprint: cursor},
        # made by orjson here, so the store serialises one string, not thousands of lists
        # (checkpoints of older versions hold a list of pairs; both are read)
        return {
            "base": encode_cursor(self.base),
            "top": encode_cursor(self.top),
            "samples": list(self._samples_json),
            "seen": orjson.dumps(self._seen_json).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Window:
        if not data:
            return cls()
        window = cls(base=decode_cursor(data.get("base")), top=decode_cursor(data.get("top")))
        for t, raw in data.get("samples", []):
            cursor = decode_cursor(raw)
            if cursor is not None:
                window.samples.append((int(t), cursor))
                window._samples_json.append([int(t), raw])
        seen = data.get("seen", [])
        if isinstance(seen, str):
            seen = orjson.loads(seen)
        for fp, raw in seen.items() if isinstance(seen, dict) else seen:
            cursor = decode_cursor(raw)
            if cursor is not None:
                window.seen[fp] = cursor
                window._seen_json[fp] = raw
        return window
