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

A row the driver cannot decode (:mod:`cdc_bridge.adapters.sql_poll.badrows`) becomes a dead letter
at ``<table>:<inc>`` or ``<table>:<key>@<cursor>`` (prefixed ``dlq:`` in its id), is
remembered in the look-back window like an emitted row, and moves the cursor past it.

Per row the work is kept small: whether a row belongs to the snapshot is decided once
per page when the page lies wholly on one side of the high-water mark, and cursors are
compared as tuples.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from cdc_bridge.adapters.sql_poll.badrows import BadRow, ascii_text
from cdc_bridge.adapters.sql_poll.resnapshot import Resnap
from cdc_bridge.adapters.sql_poll.source import TableSource
from cdc_bridge.adapters.sql_poll.values import (
    Cursor,
    decode_cursor,
    decode_value,
    encode_cursor,
    encode_value,
    fingerprint,
    key_text,
    row_hash,
    same_table,
    value_text,
)
from cdc_bridge.adapters.sql_poll.window import Window
from cdc_bridge.adapters.transform import apply_rules, mask_value
from cdc_bridge.kernel.errors import SourceSetupError
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter, Op

log = logging.getLogger("cdc_bridge.adapter.sql_poll")


@dataclass(slots=True)
class Page:
    events: list[ChangeEvent]
    #: Cursor of the last row read (the next page starts after it).
    last: Cursor | None
    full: bool
    dead_letters: list[DeadLetter] = field(default_factory=list)


def _cursor_getter(names: list[str]) -> Callable[[dict[str, Any]], Cursor]:
    if len(names) == 1:  # ``itemgetter`` gives a tuple only for two names or more
        name = names[0]
        return lambda row: (row[name],)
    return operator.itemgetter(*names)


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
        #: The table's identity when capture started (:meth:`TableSource.identity`).
        self.identity: str | None = None
        #: Resets seen (tables re-created): part of every position after the first, so
        #: the rows read again never carry the ids of their predecessors.
        self.epoch = 0
        self.snap: dict[str, int] | None = None
        #: On-demand re-snapshot in progress (:mod:`cdc_bridge.adapters.sql_poll.resnapshot`).
        self.resnap: Resnap | None = None
        self._progress_at = 0.0
        self._warned_at = 0.0
        #: After a reset: the next first run snapshots whatever the table's setting.
        self.force_snapshot = False
        #: A row's cursor tuple, made without a generator (it runs for every row).
        self._cursor_of = _cursor_getter(source.cursor_names)

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
        self.identity = data.get("identity")
        self.epoch = int(data.get("epoch", 0))

    def dump(self) -> dict[str, Any]:
        return {"mode": self.source.mode, "window": self.window.to_json(),
                "hw": encode_cursor(self.hw), "max_inc": encode_value(self.max_inc),
                "snapshot": self.snap,
                **({} if self.identity is None else {"identity": self.identity}),
                **({"epoch": self.epoch} if self.epoch else {}),
                **({} if self.resnap is None else {"resnap": self.resnap.to_json()})}

    def reset_check(self, conn: sa.Connection, on_change: str) -> list[ChangeEvent]:
        """Before a poll: the table re-created under its name? Then (``resnapshot``) one
        ``t`` event and a fresh start with an initial snapshot; (``stop``) a fatal error
        for this table alone. Nothing when the database cannot tell."""
        now = self.source.identity(conn)
        if now is None:  # cannot tell, or the table is gone right now: keep what we know
            return []    # (a reload seen between its DROP and CREATE must still be one)
        if self.identity is None:  # first look, or a checkpoint from before identities
            self.identity = now
            return []
        if same_table(self.identity, now) or not self.started:
            self.identity = now  # (an ALTER TABLE moves MariaDB's creation time)
            return []
        what = f"{self.adapter}/{self.spec.ident}: the table was dropped and created again"
        if on_change == "stop":
            raise SourceSetupError(f"{what} (on_table_change: stop): its rows since then are "
                                   "not captured; restart with on_table_change: resnapshot")
        log.warning("%s: sending t and its rows again (snapshot)", what)
        event = ChangeEvent(adapter=self.adapter, schema=self.source.schema,
                            table=self.source.table_name, op="t",
                            position=f"{self.tag}:reset@{now}", key=None,
                            ts_ms=int(time.time() * 1000),
                            source_extra={"reason": "table re-created"})
        self.window, self.started, self.hw, self.max_inc = Window(), False, None, None
        self.snap, self.resnap = None, None
        self.identity, self.force_snapshot, self.epoch = now, True, self.epoch + 1
        return [event]

    @property
    def tag(self) -> str:
        """The table's part of event positions (``ident``, then ``ident~N`` after resets)."""
        return self.spec.ident if not self.epoch else f"{self.spec.ident}~{self.epoch}"

    # --- polling ----------------------------------------------------------------------

    def begin_poll(self, conn: sa.Connection, now_ms: int) -> Cursor | None:
        """Set up on first run; returns where this poll's pages start (exclusive)."""
        if not self.started:
            self._first_run(conn)
            self.started = True
        self.window.advance(now_ms, self.lag_ms)
        return self.window.base

    def _first_run(self, conn: sa.Connection) -> None:
        snapshot = "initial" if self.force_snapshot else self.spec.effective_snapshot
        self.force_snapshot = False
        top = self.source.max_cursor(conn)
        if self.source.inc_name is not None and self.source.mode == "timestamp+incrementing":
            self.max_inc = conn.execute(sa.select(sa.func.max(
                self.source.selectable.c[self.source.inc_name]))).scalar()
        if snapshot == "none":
            self.window.base = self.window.top = top
            log.info("%s/%s: starting after the current rows (snapshot: none)",
                     self.adapter, self.spec.ident)
        elif snapshot == "initial" and top is not None:
            self.hw = top
            self.snap = {"total": self.source.count(conn), "done": 0,
                         "started_ms": int(time.time() * 1000)}
            log.info("%s/%s: initial snapshot of %d rows", self.adapter, self.spec.ident,
                     self.snap["total"])

    def page(self, conn: sa.Connection, after: Cursor | None, now_ms: int) -> Page:
        read = self.source.read_after(conn, after, self.batch_size)
        rows, last = read.rows, read.last
        events: list[ChangeEvent] = []
        snap_rows = 0
        hw = self.hw
        cursor_of = self._cursor_of
        # the page is in cursor order: decide per page unless it straddles the mark
        whole: bool | None = None if hw is None else False
        if hw is not None and rows:
            if cursor_of(rows[-1]) <= hw:
                whole = True
            elif cursor_of(rows[0]) > hw:
                whole = False
            else:
                whole = None
        for row in rows:
            cursor = cursor_of(row)
            in_snapshot = whole if whole is not None else hw is not None and cursor <= hw
            event = self._event(row, cursor, in_snapshot, now_ms)
            if event is None:
                continue
            events.append(event)
            snap_rows += in_snapshot
        dead = [d for bad in read.bad if (d := self._dead_letter(bad)) is not None]
        if last is None:
            last = after
        full = len(read) >= self.batch_size
        if self.window.shortened:
            self._warn_shortened()
        if self.snap is not None:
            self._snapshot_progress(snap_rows, last, full)
        self.window.note_poll(now_ms)
        return Page(events, last, full, dead)

    def _event(self, row: dict[str, Any], cursor: Cursor, in_snapshot: bool,
               now_ms: int) -> ChangeEvent | None:
        spec, src = self.spec, self.source
        rules = spec.columns
        image = row if rules.is_noop() else apply_rules(row, rules) or {}
        key = {k: row[k] for k in src.key_cols}
        if rules.mask:
            key = {k: mask_value(v, rules.mask_salt) if k in rules.mask else v
                   for k, v in key.items()}
        if src.mode == "incrementing":
            version = value_text(cursor[0])
            position = f"{self.tag}:{version}"
        else:
            version = ",".join(value_text(v) for v in cursor[:2 if src.inc_name else 1])
            content = fingerprint(row_hash(image))[:8]
            position = f"{self.tag}:{key_text(key)}@{version}#{content}"
        fp = fingerprint(position)
        if self.window.is_seen(fp):
            return None
        op = self._op(row, in_snapshot)
        self.window.emitted(cursor, fp if self.max_rows else None, self.max_rows)
        after: dict[str, Any] | None = image
        if src.row_filter is not None:  # reads op: judged here (no old row: see filters.md)
            routed = src.row_filter.route(op, None, row)
            if routed is None:
                return None
            op = routed[0]  # type: ignore[assignment]
            after = image if routed[2] is not None else None
        return ChangeEvent(
            adapter=self.adapter, schema=src.schema, table=src.table_name, op=op,
            position=position, key=key, after=after, ts_ms=now_ms,
            source_extra={"mode": src.mode, "cursor": version}, shape=src.shape,
        )

    def _dead_letter(self, bad: BadRow) -> DeadLetter | None:
        """A row that cannot be decoded: a dead letter, remembered like an emitted row."""
        src, cursor = self.source, bad.cursor
        version = ",".join(value_text(v) for v in cursor[:2 if src.inc_name else 1])
        if src.mode == "incrementing":
            position = f"{self.tag}:{version}"
        else:
            position = f"{self.tag}:{key_text(bad.key)}@{version}"
        fp = fingerprint("dlq:" + position)
        if self.window.is_seen(fp):
            return None
        if src.mode == "timestamp+incrementing":
            inc = cursor[1]
            if self.max_inc is None or inc > self.max_inc:
                self.max_inc = inc
        self.window.emitted(cursor, fp if self.max_rows else None, self.max_rows)
        return bad.dead_letter(self.adapter, self.spec.ident, position,
                               {"cursor": ascii_text(version)})

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
        finished = not full or last is None or last >= self.hw
        now = time.monotonic()
        if finished:
            log.info("%s/%s: snapshot done: %d rows in %.1fs (%.0f rows/s)", self.adapter,
                     self.spec.ident, done, elapsed_s, done / elapsed_s)
            self.snap = None
        elif now - self._progress_at >= self.progress_interval_s:
            self._progress_at = now
            log.info("%s/%s: snapshot %d/%d rows (%.1f%%), %.0f rows/s", self.adapter,
                     self.spec.ident, done, total, 100.0 * done / total, done / elapsed_s)

    def _warn_shortened(self) -> None:
        now = time.monotonic()
        if self.snap is None and now - self._warned_at > 60:
            self._warned_at = now
            log.warning("%s/%s: more than %d rows inside lag_window; the look-back was "
                        "shortened (raise max_window_rows or lower lag_window)",
                        self.adapter, self.spec.ident, self.max_rows)
        self.window.shortened = 0
