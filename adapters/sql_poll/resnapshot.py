"""On-demand re-snapshot of a cursor-mode table (``cdc-bridge snapshot``).

A re-snapshot of an ``incrementing``/``timestamp``/``timestamp+incrementing`` table is
a separate keyset walk in *primary-key* order (``WHERE key > :after ORDER BY key LIMIT
batch_size``), one page per scheduling unit, each row emitted as ``op: r`` with its
current content. The walk ends at the largest key the table held when it started: rows
inserted later are the change polls' to capture, and a table that grows faster than
pages are read would otherwise never finish. It shares nothing with the table's change
cursor: the look-back window, high-water mark and base are neither read nor moved, so
normal polls go on (they take turns with re-snapshot pages) and can neither skip nor
repeat rows because of it. Order per key: every event is read after the ones emitted
before it, and a poll reads the row as it is *now*, so an event that follows a key's
``r`` carries that state or a newer one.

Progress (``seq``, last key, rows done) is part of the table's checkpoint, committed
with each page's events, so a crash resumes after the last committed page. Event
positions are ``<table>:resnap<seq>:<key>``: one per row per request, the same if a page
is read again after a crash (JetStream drops the copy). A row that cannot be decoded
is a dead letter at the same position.

A partial backfill (``--where``, kept in the progress as ``where``) adds its condition
to the walk's queries (AND the table's own ``filter``): only matching rows are read,
and the walk ends at the largest matching key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cdc_bridge.adapters.sql_poll.source import TableSource
from cdc_bridge.adapters.sql_poll.values import decode_cursor, encode_cursor, key_text
from cdc_bridge.adapters.transform import apply_rules, mask_value
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter


@dataclass(slots=True)
class Resnap:
    seq: int
    after: Any = None  # encoded key cursor
    done: int = 0
    #: The largest key when the walk started (encoded); the walk ends there.
    upto: Any = None
    bounded: bool = False
    #: A partial backfill's ``where`` (``None``: every row).
    where: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "after": self.after, "done": self.done, "upto": self.upto,
                "bounded": self.bounded, **({} if self.where is None else
                                            {"where": self.where})}

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> Resnap | None:
        return None if not raw else cls(int(raw["seq"]), raw.get("after"), int(raw["done"]),
                                        raw.get("upto"), bool(raw.get("bounded", False)),
                                        raw.get("where"))


def resnap_page(adapter: str, source: TableSource, state: Resnap, batch_size: int,
                conn: sa.Connection, now_ms: int
                ) -> tuple[list[ChangeEvent], list[DeadLetter], bool]:
    """One page of the walk: its ``r`` events, dead letters, and whether it is complete."""
    spec = source.spec
    only = source.where_clause(state.where)
    if not state.bounded:  # rows inserted later are the change polls' to capture
        state.upto, state.bounded = encode_cursor(source.max_key(conn, only)), True
        if state.upto is None:
            return [], [], True  # the table is empty
    read = source.read_by_key(conn, decode_cursor(state.after), batch_size,
                              decode_cursor(state.upto), only)
    rows = read.rows
    events: list[ChangeEvent] = []
    for row in rows:
        key = {k: row[k] for k in source.key_cols}
        position = f"{spec.ident}:resnap{state.seq}:{key_text(key)}"
        if spec.columns.mask:
            key = {k: mask_value(v, spec.columns.mask_salt) if k in spec.columns.mask else v
                   for k, v in key.items()}
        events.append(ChangeEvent(
            adapter=adapter, schema=source.schema, table=source.table_name, op="r",
            position=position, key=key, after=apply_rules(row, spec.columns) or {},
            ts_ms=now_ms, source_extra={"mode": source.mode, "resnapshot": state.seq},
            shape=source.shape))
    dead = [bad.dead_letter(adapter, spec.ident,
                            f"{spec.ident}:resnap{state.seq}:{key_text(bad.key)}")
            for bad in read.bad]
    if read.last is not None:
        state.after = encode_cursor(read.last)
    state.done += len(read)
    return events, dead, len(read) < batch_size
