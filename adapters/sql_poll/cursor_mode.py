"""The cursor modes: ``incrementing``, ``timestamp``, ``timestamp+incrementing``.

One :class:`CursorTable` per configured table keeps that table's part of the checkpoint
and turns pages of rows into events. A poll is: :meth:`CursorTable.begin_poll` (first
run set-up, move the look-back base), then pages from the base upwards
(:meth:`CursorTable.page`) until a page is not full. Every page's events and the new
table state go out as one batch, committed together by the daemon.

Cursors (a tuple, compared lexicographically):

- ``incrementing``: ``(inc,)``; the column must be unique and only grow.
- ``timestamp``: ``(ts, *key)``: rows sharing one timestamp are ordered by key, so a
  restart in the middle of them resumes exactly (nothing skipped, nothing repeated).
- ``timestamp+incrementing``: ``(ts, inc)``.

Operations: ``r`` for rows at or below the snapshot high-water mark taken on first run
(``snapshot: initial``); otherwise ``c`` in incrementing mode; in
``timestamp+incrementing`` mode ``c`` when ``inc`` is above every value emitted before,
else ``u``; in ``timestamp`` mode always ``u`` (a timestamp cannot tell an insert from an
update: read it as "the row is now this"). ``before`` is null: polling sees no old row.

Event positions identify the row version, so a re-read after a crash yields the same
event ids: ``<table>:<inc>`` in incrementing mode, ``<table>:<key>@<cursor>#<hash>`` in
the timestamp modes (the row hash also separates two updates within one timestamp tick).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from adapters.sql_poll.resnapshot import Resnap
from adapters.sql_poll.source import TableSource
from adapters.sql_poll.values import (
    Cursor,
    compare_cursor,
    decode_cursor,
    decode_value,
    encode_cursor,
    encode_value,
    fingerprint,
    key_text,
    row_hash,
    value_text,
)
from adapters.sql_poll.window import Window
from adapters.transform import apply_rules, mask_value
from bridge.events import ChangeEvent, Op

log = logging.getLogger("cdc_bridge.adapter.sql_poll")


@dataclass(slots=True)
class Page:
    events: list[ChangeEvent]
    #: Cursor of the last row read (the next page starts after it).
    last: Cursor | None
    full: bool


class CursorTable:
    def __init__(self, adapter: str, source: TableSource, *, batch_size: int, lag_s: float,
                 max_window_rows: int, progress_interval_s: float) -> None:
        self.adapter = adapter
        self.source = source
        self.spec = source.spec
        self.batch_size = batch_size
        self.lag_ms = int(lag_s * 1000)
        self.max_rows = max_window_rows if lag_s > 0 else 0
        self.progress_interval_s = progress_interval_s
        self.window = Window()
        self.started = False
        self.hw: Cursor | None = None
        self.max_inc: Any = None
        self.snap: dict[str, int] | None = None
        #: On-demand re-snapshot in progress (:mod:`adapters.sql_poll.resnapshot`).
        self.resnap: Resnap | None = None
        self._progress_at = 0.0
        self._warned_at = 0.0

    # --- checkpoint -------------------------------------------------------------------

    def load(self, data: Any) -> None:
        if data is None:
            return
        if isinstance(data, dict):
            self.resnap = Resnap.from_json(data.get("resnap"))
        if not isinstance(data, dict):  # checkpoint of the first sql_poll: the last id
            self.started = True
            self.window.base = self.window.top = (data,)
            return
        self.started = True
        self.window = Window.from_json(data.get("window"))
        self.hw = decode_cursor(data.get("hw"))
        self.max_inc = decode_value(data.get("max_inc"))
        self.snap = data.get("snapshot")

    def dump(self) -> dict[str, Any]:
        return {"mode": self.source.mode, "window": self.window.to_json(),
                "hw": encode_cursor(self.hw), "max_inc": encode_value(self.max_inc),
                "snapshot": self.snap,
                **({} if self.resnap is None else {"resnap": self.resnap.to_json()})}

    # --- polling ----------------------------------------------------------------------

    def begin_poll(self, conn: sa.Connection, now_ms: int) -> Cursor | None:
        """Set up on first run; returns where this poll's pages start (exclusive)."""
        if not self.started:
            self._first_run(conn)
            self.started = True
        self.window.advance(now_ms, self.lag_ms)
        return self.window.base

    def _first_run(self, conn: sa.Connection) -> None:
        snapshot = self.spec.effective_snapshot
        top = self.source.max_cursor(conn)
        if self.source.inc_name is not None and self.source.mode == "timestamp+incrementing":
            self.max_inc = conn.execute(sa.select(sa.func.max(
                self.source.selectable.c[self.source.inc_name]))).scalar()
        if snapshot == "none":
            self.window.base = self.window.top = top
            log.info("%s/%s: starting after the current rows (snapshot: none)",
                     self.adapter, self.spec.name)
        elif snapshot == "initial" and top is not None:
            self.hw = top
            self.snap = {"total": self.source.count(conn), "done": 0,
                         "started_ms": int(time.time() * 1000)}
            log.info("%s/%s: initial snapshot of %d rows", self.adapter, self.spec.name,
                     self.snap["total"])

    def page(self, conn: sa.Connection, after: Cursor | None, now_ms: int) -> Page:
        rows = self.source.read_after(conn, after, self.batch_size)
        events: list[ChangeEvent] = []
        snap_rows = 0
        for row in rows:
            cursor = self.source.cursor_of(row)
            in_snapshot = self.hw is not None and compare_cursor(cursor, self.hw) <= 0
            event = self._event(row, cursor, in_snapshot, now_ms)
            if event is None:
                continue
            events.append(event)
            snap_rows += in_snapshot
        last = self.source.cursor_of(rows[-1]) if rows else after
        full = len(rows) >= self.batch_size
        if self.window.shortened:
            self._warn_shortened()
        if self.snap is not None:
            self._snapshot_progress(snap_rows, last, full)
        self.window.note_poll(now_ms)
        return Page(events, last, full)

    def _event(self, row: dict[str, Any], cursor: Cursor, in_snapshot: bool,
               now_ms: int) -> ChangeEvent | None:
        spec, src = self.spec, self.source
        image = apply_rules(row, spec.columns) or {}
        key = {k: row[k] for k in src.key_cols}
        if spec.columns.mask:
            key = {k: mask_value(v, spec.columns.mask_salt) if k in spec.columns.mask else v
                   for k, v in key.items()}
        if src.mode == "incrementing":
            version = value_text(cursor[0])
            position = f"{spec.name}:{version}"
        else:
            version = ",".join(value_text(v) for v in cursor[:2 if src.inc_name else 1])
            content = fingerprint(row_hash(image))[:8]
            position = f"{spec.name}:{key_text(key)}@{version}#{content}"
        fp = fingerprint(position)
        if self.window.is_seen(fp):
            return None
        op = self._op(row, in_snapshot)
        self.window.emitted(cursor, fp if self.max_rows else None, self.max_rows)
        return ChangeEvent(
            adapter=self.adapter, schema=src.schema, table=src.table_name, op=op,
            position=position, key=key, after=image, ts_ms=now_ms,
            source_extra={"mode": src.mode, "cursor": version},
        )

    def _op(self, row: dict[str, Any], in_snapshot: bool) -> Op:
        mode = self.source.mode
        op: Op = "r" if in_snapshot else "c" if mode == "incrementing" else "u"
        if mode == "timestamp+incrementing":
            inc = row[self.source.inc_name or ""]
            if not in_snapshot and (self.max_inc is None or inc > self.max_inc):
                op = "c"
            if self.max_inc is None or inc > self.max_inc:
                self.max_inc = inc
        return op

    def _snapshot_progress(self, rows: int, last: Cursor | None, full: bool) -> None:
        assert self.snap is not None and self.hw is not None
        self.snap["done"] += rows
        done, total = self.snap["done"], max(self.snap["total"], 1)
        elapsed_s = max(time.time() - self.snap["started_ms"] / 1000, 1e-3)
        finished = not full or last is None or compare_cursor(last, self.hw) >= 0
        now = time.monotonic()
        if finished:
            log.info("%s/%s: snapshot done: %d rows in %.1fs (%.0f rows/s)", self.adapter,
                     self.spec.name, done, elapsed_s, done / elapsed_s)
            self.snap = None
        elif now - self._progress_at >= self.progress_interval_s:
            self._progress_at = now
            log.info("%s/%s: snapshot %d/%d rows (%.1f%%), %.0f rows/s", self.adapter,
                     self.spec.name, done, total, 100.0 * done / total, done / elapsed_s)

    def _warn_shortened(self) -> None:
        now = time.monotonic()
        if self.snap is None and now - self._warned_at > 60:
            self._warned_at = now
            log.warning("%s/%s: more than %d rows inside lag_window; the look-back was "
                        "shortened (raise max_window_rows or lower lag_window)",
                        self.adapter, self.spec.name, self.max_rows)
        self.window.shortened = 0
