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

Pure state and arithmetic on decoded cursors; no I/O, no clock (``now_ms`` is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapters.sql_poll.values import Cursor, compare_cursor, decode_cursor, encode_cursor


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

    def advance(self, now_ms: int, lag_ms: int) -> None:
        """Move the base to the highest cursor seen at least ``lag_ms`` ago."""
        cut = now_ms - lag_ms
        keep: list[tuple[int, Cursor]] = []
        for at_ms, cursor in self.samples:
            if at_ms <= cut:
                self._raise_base(cursor)
            else:
                keep.append((at_ms, cursor))
        self.samples = keep
        self._prune()

    def note_poll(self, now_ms: int) -> None:
        """Record the highest cursor as of ``now_ms`` (once per poll)."""
        if self.top is None:
            return
        if self.samples and compare_cursor(self.samples[-1][1], self.top) >= 0:
            return
        self.samples.append((now_ms, self.top))

    def is_seen(self, fp: str) -> bool:
        return fp in self.seen

    def emitted(self, cursor: Cursor, fp: str | None, max_rows: int) -> None:
        """A row version was emitted; remember it while it can be read again."""
        if self.top is None or compare_cursor(cursor, self.top) > 0:
            self.top = cursor
        if fp is None or max_rows == 0:
            self._raise_base(self.top)
            return
        self.seen[fp] = cursor
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
        if self.base is None or compare_cursor(cursor, self.base) > 0:
            self.base = cursor

    def _prune(self) -> None:
        base = self.base
        if base is None:
            return
        self.seen = {fp: c for fp, c in self.seen.items() if compare_cursor(c, base) > 0}
        self.samples = [(t, c) for t, c in self.samples if compare_cursor(c, base) > 0]

    def to_json(self) -> dict[str, Any]:
        return {
            "base": encode_cursor(self.base),
            "top": encode_cursor(self.top),
            "samples": [[t, encode_cursor(c)] for t, c in self.samples],
            "seen": [[fp, encode_cursor(c)] for fp, c in self.seen.items()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Window:
        if not data:
            return cls()
        samples = [(int(t), decode_cursor(c)) for t, c in data.get("samples", [])]
        seen = {fp: decode_cursor(c) for fp, c in data.get("seen", [])}
        return cls(
            base=decode_cursor(data.get("base")),
            top=decode_cursor(data.get("top")),
            samples=[(t, c) for t, c in samples if c is not None],
            seen={fp: c for fp, c in seen.items() if c is not None},
        )

