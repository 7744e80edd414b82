"""The ``diff`` mode: find inserts, updates and deletes by comparing with the last state.

For tables without any usable change column. A *pass* walks the table in primary-key
order, one keyset page per *step*: each page's rows are hashed (after column rules)
and compared with the hashes in the :class:`~cdc_bridge.adapters.sql_poll.diff_state.DiffState`
file; new keys become ``c`` (``r`` in the first, snapshot pass), changed ones ``u``
with the last emitted row as ``before`` (or null with ``before_images: false``, which
keeps only hashes). Every key read is marked as seen in that step. When the walk ends,
a *sweep* pages through the state for keys not seen during the pass: those rows were
deleted (``d``, with ``before``). Memory holds one page, whatever the table size.

The table's checkpoint (pass, phase, last committed step, where the walk or sweep is)
goes into the outbox with each step's events; the state file is rolled back to that
step on start (see ``diff_state``), so a crash anywhere in a pass resumes it with no
change lost or emitted twice. Event positions are ``<table>:<pass>:<key>``: one event
per key per pass, the same ids if a step is redone.

A row changed several times between two passes yields one event (its latest state); a
row deleted and re-inserted with the same content between passes yields none.

Re-snapshot on demand (``cdc-bridge snapshot``): the next pass starts at once and is a
*full* pass: every row read becomes ``r`` (its current content), the state records the
rows that changed (so the next normal pass diffs against what the ``r`` events said),
and the sweep emits ``d`` for keys gone since the last pass, as in any pass. A request
while a pass runs applies to the next pass, so the state is never half refreshed.

A partial backfill (``--where``) makes that full pass read only the matching rows (AND
the table's own ``filter``), emit them as ``r`` and refresh their state, and skip the
sweep: rows it did not read are not deleted; changes of other rows, and deletes, are
found by the next normal pass. On a table that has not had its first pass yet it waits
for that pass (the diff needs the table's state).

A row that cannot be decoded (:mod:`cdc_bridge.adapters.sql_poll.badrows`) is marked seen (so no
``d`` follows) and becomes a dead letter at its position; the state keeps a hash of what
could be read and why it failed, with no image, so the same broken row is not reported
again by every pass. Once it reads cleanly it is a ``u`` (with ``before`` null), and if it
is deleted a ``d`` (``before`` null).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
import sqlalchemy as sa

from cdc_bridge.adapters.sql_poll.badrows import BadRow
from cdc_bridge.adapters.sql_poll.diff import Change, SourceRow, deletes, diff_chunk, snapshot_chunk
from cdc_bridge.adapters.sql_poll.diff_state import DiffState, Stored, Write
from cdc_bridge.adapters.sql_poll.source import TableSource
from cdc_bridge.adapters.sql_poll.values import decode_cursor, encode_cursor, key_text
from cdc_bridge.adapters.transform import apply_rules, mask_value
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter, Op, dumps

log = logging.getLogger("cdc_bridge.adapter.sql_poll")


class DiffTable:
    def __init__(self, adapter: str, source: TableSource, state: DiffState, *,
                 batch_size: int, progress_interval_s: float) -> None:
        self.adapter = adapter
        self.source = source
        self.spec = source.spec
        self.tbl = source.spec.ident
        self.state = state
        self.batch_size = batch_size
        self.progress_interval_s = progress_interval_s
        self.pass_no = 0
        self.phase = "idle"
        self.step = 0
        self.pass_start = 0
        self.after: Any = None
        self.sweep_after: str | None = None
        self.idle_since_ms = 0
        self.insert_op: Op = "c"
        #: First pass with ``snapshot: none``: record the state, emit nothing.
        self.silent = False
        self.resnapshot = False
        self.snap: dict[str, int] | None = None
        #: Re-snapshot requested (its number) / running in the current pass.
        self.full_pending: int | None = None
        self.full: int | None = None
        #: A partial backfill's ``where`` of the requested / running full pass.
        self.where_pending: str | None = None
        self.where: str | None = None
        self._counts: dict[str, int] = {}
        self._dead: list[DeadLetter] = []
        self._pass_t0 = time.monotonic()
        self._progress_at = 0.0

    # --- checkpoint -------------------------------------------------------------------

    def load(self, data: dict[str, Any] | None) -> None:
        """Restore from the committed checkpoint; undo state steps the outbox never got."""
        if data is None:
            self.state.clear(self.tbl)
            return
        self.pass_no = int(data["pass"])
        self.step = int(data["step"])
        if data.get("state_id") != self.state.state_id:
            log.warning("%s/%s: diff state file %s does not match the checkpoint (lost or "
                        "replaced); re-snapshotting the table with op r", self.adapter,
                        self.tbl, self.state.path)
            self.state.clear(self.tbl)
            self.resnapshot = True
            self.step = 0
            return
        undone = self.state.rollback(self.tbl, self.step)
        if undone:
            log.info("%s/%s: rolled back %d uncommitted diff state rows after step %d",
                     self.adapter, self.tbl, undone, self.step)
        self.phase = data["phase"]
        self.pass_start = int(data["pass_start"])
        self.after = decode_cursor(data.get("after"))
        self.sweep_after = data.get("sweep_after")
        self.idle_since_ms = int(data.get("idle_since_ms", 0))
        self.insert_op = data.get("insert_op", "c")
        self.silent = bool(data.get("silent", False))
        self.snap = data.get("snapshot")
        self.full_pending = data.get("full_pending")
        self.full = data.get("full")
        self.where_pending = data.get("where_pending")
        self.where = data.get("where")

    def dump(self) -> dict[str, Any]:
        return {"mode": "diff", "state_id": self.state.state_id, "pass": self.pass_no,
                "phase": self.phase, "step": self.step, "pass_start": self.pass_start,
                "after": encode_cursor(self.after), "sweep_after": self.sweep_after,
                "idle_since_ms": self.idle_since_ms, "insert_op": self.insert_op,
                "silent": self.silent, "snapshot": self.snap,
                "full_pending": self.full_pending, "full": self.full,
                **({} if self.where_pending is None else {"where_pending": self.where_pending}),
                **({} if self.where is None else {"where": self.where})}

    # --- passes -----------------------------------------------------------------------

    def due_ms(self, interval_s: float) -> int:
        """Wall time (ms) at which the next step may run."""
        if self.phase != "idle" or self.full_pending is not None:
            return 0
        return self.idle_since_ms + int(interval_s * 1000)

    def step_once(self, conn: sa.Connection, now_ms: int
                  ) -> tuple[list[ChangeEvent], list[DeadLetter]]:
        """One step of the pass (starting a pass when idle): its events and dead letters."""
        if self.phase == "idle":
            self._begin_pass(conn)
        self.step += 1
        self._dead = []
        changes = self._scan(conn, now_ms) if self.phase == "scan" else self._sweep(now_ms)
        if self.silent:
            changes = []
        for ch in changes:
            self._counts[ch.op] = self._counts.get(ch.op, 0) + 1
        if self.phase == "idle":
            c = self._counts
            # a pass that found nothing is not news: INFO only when rows changed
            changed = any(c.get(op, 0) for op in ("c", "r", "u", "d"))
            log.log(logging.INFO if changed else logging.DEBUG,
                    "%s/%s: diff pass %d done in %.1fs: %d rows read, %d c, %d r, %d u, "
                    "%d d", self.adapter, self.tbl, self.pass_no,
                    time.monotonic() - self._pass_t0, c.get("rows", 0), c.get("c", 0),
                    c.get("r", 0), c.get("u", 0), c.get("d", 0))
        events = [ev for ch in changes if (ev := self._event(ch, now_ms)) is not None]
        if self.phase == "idle" and self.where is not None:  # a partial pass ended
            self.full = self.where = None
        return events, self._dead

    def _begin_pass(self, conn: sa.Connection) -> None:
        self.state.purge_tombstones(self.tbl, self.step)
        first = self.pass_no == 0 or self.resnapshot
        self.pass_no += 1
        self.pass_start = self.step + 1
        self.phase, self.after, self.sweep_after = "scan", None, None
        self._counts = {"rows": 0, "c": 0, "u": 0, "d": 0, "r": 0}
        self._pass_t0 = time.monotonic()
        snapshot = self.spec.effective_snapshot if not self.resnapshot else "initial"
        self.insert_op = "r" if first and snapshot == "initial" else "c"
        self.silent = first and snapshot == "none"
        self.resnapshot = False
        self.where = None
        if first and self.where_pending is not None:
            pass  # a partial pass needs the table's state: it runs after this first pass
        else:
            self.full, self.full_pending = self.full_pending, None
            self.where, self.where_pending = self.where_pending, None
        if self.full is not None:
            self.silent = False
            log.info("%s/%s: re-snapshot %d: a full pass emits every row%s as r",
                     self.adapter, self.tbl, self.full,
                     "" if self.where is None else f" where {self.where}")
        if self.insert_op == "r" or self.full is not None:
            self.snap = {"total": self.source.count(conn, self._only()), "done": 0,
                         "started_ms": int(time.time() * 1000)}
            log.info("%s/%s: initial snapshot (diff) of %d rows", self.adapter, self.tbl,
                     self.snap["total"])

    def _only(self) -> sa.ColumnElement[bool] | None:
        """The running partial pass's condition (``None``: every row)."""
        return self.source.where_clause(self.where)

    def _scan(self, conn: sa.Connection, now_ms: int) -> list[Change]:
        read = self.source.read_after(conn, self.after, self.batch_size, self._only())
        rows = read.rows
        src: list[SourceRow] = []
        for row in rows:
            image = dumps(apply_rules(row, self.spec.columns))
            kt = key_text({k: row[k] for k in self.source.key_cols})
            src.append(SourceRow(kt, _hash(image), image))
        keys = [r.key for r in src]
        bad = [(key_text(b.key), b) for b in read.bad]
        stored = self.state.lookup(self.tbl, keys + [k for k, _ in bad])
        if self.full is not None:
            changes, writes = snapshot_chunk(src, stored, keep_images=self.spec.before_images)
        else:
            changes, writes = diff_chunk(src, stored, insert_op=self.insert_op,
                                         keep_images=self.spec.before_images)
        if bad:
            writes.extend(self._bad_rows(bad, stored))
        self.state.apply(self.tbl, self.step, writes, keys + [k for k, _ in bad])
        self._counts["rows"] = self._counts.get("rows", 0) + len(read)
        if read.last is not None:
            self.after = read.last
        if len(read) < self.batch_size:
            self.phase, self.sweep_after = "sweep", None
            if self.where is not None:  # rows outside it were not read: no sweep
                self.phase, self.idle_since_ms = "idle", now_ms
        self._progress(len(read))
        return changes

    def _bad_rows(self, bad: list[tuple[str, BadRow]],
                  stored: Mapping[str, Stored]) -> list[Write]:
        """Dead letters for undecodable rows not already reported as they are now."""
        writes: list[Write] = []
        for kt, row in bad:
            h = _hash(b"undecodable\x1f" + dumps([row.columns, row.reason, row.partial]))
            old = stored.get(kt)
            if self.full is None and old is not None and old.hash == h:
                continue
            writes.append(Write(kt, h, None))
            self._dead.append(row.dead_letter(self.adapter, self.tbl,
                                              f"{self.tbl}:{self.pass_no}:{kt}"))
        return writes

    def _sweep(self, now_ms: int) -> list[Change]:
        unseen = self.state.unseen(self.tbl, self.pass_start, self.sweep_after,
                                   self.batch_size)
        changes, writes = deletes(unseen)
        self.state.apply(self.tbl, self.step, writes, [])
        if unseen:
            self.sweep_after = unseen[-1][0]
        if len(unseen) < self.batch_size:
            self.phase, self.idle_since_ms = "idle", now_ms
            self.full = None
        return changes

    def _progress(self, rows: int) -> None:
        if self.snap is None:
            return
        self.snap["done"] += rows
        done, total = self.snap["done"], max(self.snap["total"], 1)
        elapsed_s = max(time.time() - self.snap["started_ms"] / 1000, 1e-3)
        now = time.monotonic()
        if self.phase != "scan":
            log.info("%s/%s: snapshot done: %d rows in %.1fs (%.0f rows/s)", self.adapter,
                     self.tbl, done, elapsed_s, done / elapsed_s)
            self.snap = None
        elif now - self._progress_at >= self.progress_interval_s:
            self._progress_at = now
            log.info("%s/%s: snapshot %d/%d rows (%.1f%%), %.0f rows/s", self.adapter,
                     self.tbl, done, total, 100.0 * done / total, done / elapsed_s)

    def _event(self, ch: Change, now_ms: int) -> ChangeEvent | None:
        key: dict[str, Any] = orjson.loads(ch.key)
        rules = self.spec.columns
        if rules.mask:
            key = {k: mask_value(v, rules.mask_salt) if k in rules.mask else v
                   for k, v in key.items()}
        op = ch.op
        before = None if ch.before is None else orjson.loads(ch.before)
        after = None if ch.after is None else orjson.loads(ch.after)
        if self.source.row_filter is not None:  # reads op: judged on the row images
            routed = self.source.row_filter.route(op, before, after)
            if routed is None:
                return None
            op, before, after = routed[0], routed[1], routed[2]
        return ChangeEvent(
            adapter=self.adapter, schema=self.source.schema, table=self.source.table_name,
            op=op,  # type: ignore[arg-type]
            position=f"{self.tbl}:{self.pass_no}:{ch.key}", key=key,
            before=before, after=after,
            ts_ms=now_ms, source_extra={"mode": "diff", "pass": self.pass_no,
                                        **({} if self.full is None or ch.op != "r"
                                           else {"resnapshot": self.full})},
            shape=self.source.shape,
        )


def _hash(image: bytes) -> bytes:
    return hashlib.blake2b(image, digest_size=16).digest()
