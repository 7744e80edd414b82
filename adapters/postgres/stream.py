"""The streaming half of the adapter: replication messages -> batches, acks -> slot flushes.

One loop on the event loop: drain what libpq has buffered, decode each CopyData
(:mod:`cdc_bridge.adapters.postgres.pgoutput`), turn changes into events
(:mod:`cdc_bridge.adapters.postgres.changes`), and yield a :class:`ChangeBatch` when it holds
``batch_size`` events, or when the socket is quiet and the oldest event waited
``max_batch_delay``. The socket is not read while the daemon commits a batch (the
generator is suspended), so the kernel buffer and the server are the back-pressure.

Large transactions: protocol version 1 makes the server send a transaction only once
committed, whole and in order (the server spills big ones to disk itself). We never hold
one: batches are cut inside it, with a checkpoint naming the transaction's commit LSN and
how many of its changes are already in the outbox; the slot stays at the end of the
previous transaction until the last batch of this one is committed.

Outbox tables (``outbox_tables``): an Insert becomes a routed message
(:meth:`~cdc_bridge.adapters.postgres.changes.EventBuilder.outbox_message`), a malformed row a dead
letter; their updates, deletes and truncates yield nothing. A message is one change of
its transaction like an event: it counts towards ``batch_size`` and in the checkpoint's
``done``, so a transaction resumed after a crash neither skips nor repeats one.

Re-snapshots on demand (:mod:`cdc_bridge.adapters.postgres.resnapshot`): between two transactions
the loop lets the :class:`~cdc_bridge.adapters.postgres.resnapshot.Resnapshotter` read the next
chunk, reports each change of a held table to it, and at each known WAL position (a
commit's end, a ``Begin``'s commit LSN, a keepalive or logical message outside a
transaction) lets it release a passed chunk as ``r`` events into the batch being built.

Flushes: the daemon calls :meth:`StreamReader.acknowledge` after each commit; we send
the server that LSN as written/flushed/applied, immediately when it moved and at least
every ``status_interval``, and at once when a keepalive asks for a reply. When nothing
is pending (no buffered event, no open transaction), everything up to the last
keepalive's WAL end is done, so idle periods (and heartbeats) advance the slot too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from cdc_bridge.adapters.contract import ChangeBatch
from cdc_bridge.adapters.postgres import pgoutput as po
from cdc_bridge.adapters.postgres.changes import EventBuilder, RelationState, TxMeta
from cdc_bridge.adapters.postgres.config import HEARTBEAT_PREFIX, RESET_PREFIX, PostgresConfig
from cdc_bridge.adapters.postgres.position import Position, governing
from cdc_bridge.adapters.postgres.replication import ReplicationConnection
from cdc_bridge.adapters.postgres.resnapshot import Resnapshotter
from cdc_bridge.kernel.errors import DecodeError
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter, RoutedMessage

log = logging.getLogger("cdc_bridge.adapter.postgres")


class _Tx:
    __slots__ = ("index", "meta", "skip", "skip_below")

    def __init__(self, meta: TxMeta, skip: bool, skip_below: int) -> None:
        self.meta = meta
        self.index = 0
        self.skip = skip
        self.skip_below = skip_below


class StreamReader:
    def __init__(self, config: PostgresConfig, conn: ReplicationConnection,
                 builder: EventBuilder, pos: Position,
                 prepare_relation: Callable[[po.Relation], Awaitable[None]] | None = None
                 ) -> None:
        self.config = config
        self.name = config.name
        self.conn = conn
        self.builder = builder
        self.pos = pos
        self.prepare_relation = prepare_relation
        self.events: list[ChangeEvent] = []
        self.dead: list[DeadLetter] = []
        #: Routed messages of outbox tables, in WAL order.
        self.messages: list[RoutedMessage] = []
        self.tx: _Tx | None = None
        self.tx_lsn = 0
        self.dirty = False
        self.first_at = 0.0
        self.flushed = pos.lsn
        self.sent_flush = -1
        self.sent_at = 0.0
        self.reply_due = False
        self.unacked = False
        self.server_end = 0
        self.idle_end = 0
        self.last_data_at = time.monotonic()
        self.prefixes = frozenset(config.messages)
        #: Bytes of WAL the server has written past what this stream has read.
        self.lag_bytes = 0
        #: Set by the adapter: on-demand re-snapshots interleaved with the stream.
        self.resnap: Resnapshotter | None = None
        #: A problem found beside the stream (the table watch): raised by ``batches``.
        self.failure: BaseException | None = None
        #: Called with a table whose reset message the stream reached (see tables.py).
        self.on_reset: Callable[[str], None] | None = None

    # ---------------------------------------------------------------- public

    async def batches(self) -> AsyncIterator[ChangeBatch]:
        cfg = self.config
        delay = cfg.max_batch_delay
        await self.conn.start(cfg.slot_name(), po.lsn_to_str(self.pos.lsn),
                              cfg.publication_name())
        log.info("%s: streaming from slot %s at %s", self.name, cfg.slot_name(),
                 po.lsn_to_str(self.pos.lsn), extra={"position": po.lsn_to_str(self.pos.lsn)})
        while True:
            if self.failure is not None:
                raise self.failure
            raws = self.conn.read_available()
            for raw in raws:
                rel = self._handle(raw)
                if rel is not None and self.prepare_relation is not None:
                    await self.prepare_relation(rel)
                if len(self.events) + len(self.messages) >= cfg.batch_size:
                    yield self._take()
                if self.tx is None and self.resnap is not None and self.resnap.wants_chunk():
                    await self.resnap.read_chunk()
            if self.tx is None and self.resnap is not None and self.resnap.wants_chunk():
                await self.resnap.read_chunk()
            now = time.monotonic()
            if raws:
                self.last_data_at = now
            pending = self._pending()
            age = now - self.first_at
            if pending and ((not raws and age >= delay) or age >= 5 * delay + 0.05):
                yield self._take()
                pending = False
            await self._status(now)
            if not raws:
                wait = max(0.001, self.first_at + delay - now) if pending else 1.0
                await self.conn.wait_readable(min(wait, cfg.status_interval))

    def request(self) -> None:
        """A re-snapshot was requested: commit a checkpoint carrying it soon."""
        self._note()
        self.dirty = True
        self.conn.wake()

    def acknowledge(self, lsn: int) -> None:
        self.flushed = max(self.flushed, lsn)
        self.unacked = False

    def idle_s(self) -> float:
        return time.monotonic() - self.last_data_at

    # ---------------------------------------------------------------- internals

    def _take(self) -> ChangeBatch:
        pos = self.pos
        if self.tx is not None and not self.tx.skip:
            pos.tx_lsn, pos.tx_done = self.tx_lsn, max(self.tx.index, self.tx.skip_below)
        else:
            pos.tx_lsn, pos.tx_done = None, 0
        batch = ChangeBatch(self.events, pos.to_checkpoint(), self.dead, self.messages)
        self.events, self.dead, self.messages, self.dirty = [], [], [], False
        self.unacked = True
        return batch

    async def _status(self, now: float) -> None:
        if self.tx is None and not self.unacked and not self._pending():
            # nothing pending: everything up to the server's last WAL end is handled
            self.flushed = max(self.flushed, self.idle_end)
        moved = self.flushed != self.sent_flush
        if self.reply_due or (moved and now - self.sent_at >= 0.2) or (
                now - self.sent_at >= self.config.status_interval):
            lsn = self.flushed
            await self.conn.send(po.standby_status_update(lsn, lsn, lsn))
            self.sent_flush, self.sent_at, self.reply_due = lsn, now, False
            if self.server_end:
                self.lag_bytes = max(0, self.server_end - lsn)

    def _pending(self) -> bool:
        return bool(self.events or self.dead or self.messages or self.dirty)

    def _note(self) -> None:
        if not self._pending():
            self.first_at = time.monotonic()

    def _handle(self, raw: bytes) -> po.Relation | None:
        msg = po.parse_copy_data(raw)
        if isinstance(msg, po.PrimaryKeepalive):
            self.server_end = max(self.server_end, msg.wal_end)
            if self.tx is None:
                self.idle_end = max(self.idle_end, msg.wal_end)
                self._release(msg.wal_end)
            self.reply_due = self.reply_due or msg.reply_requested
            return None
        self.server_end = max(self.server_end, msg.wal_end)
        return self._message(po.decode_message(msg.payload), msg.wal_start)

    def _message(self, m: po.Message, lsn: int) -> po.Relation | None:
        if isinstance(m, po.Insert | po.Update | po.Delete):
            self._change(m, lsn)
        elif isinstance(m, po.Begin):
            self._begin(m)
        elif isinstance(m, po.Commit):
            self._commit(m)
        elif isinstance(m, po.Relation):
            self.builder.relation(m)
            return m
        elif isinstance(m, po.Truncate):
            self._truncate(m, lsn)
        elif isinstance(m, po.LogicalMessage):
            self._logical(m, lsn)
        elif isinstance(m, po.Origin | po.Type):
            pass
        else:
            raise DecodeError(f"pgoutput: unexpected {type(m).__name__} with protocol 1")
        return None

    def _release(self, lsn: int) -> None:
        """The stream is at ``lsn`` between transactions: a held chunk may go out."""
        if self.resnap is None or self.resnap.pending is None:
            return
        released = self.resnap.at(lsn)
        if released is not None:
            self._note()
            self.events.extend(released[0])
            self.dead.extend(released[1])
            self.dirty = True

    def _begin(self, m: po.Begin) -> None:
        self._release(m.final_lsn)
        pos = self.pos
        skip = m.final_lsn < pos.lsn
        skip_below = pos.tx_done if (pos.tx_lsn == m.final_lsn) else 0
        meta = TxMeta(po.lsn_to_str(m.final_lsn), m.xid, po.pg_ts_to_unix_ms(m.commit_ts_us))
        self.tx = _Tx(meta, skip, skip_below)
        self.tx_lsn = m.final_lsn

    def _commit(self, m: po.Commit) -> None:
        tx = self.tx
        self.tx = None
        if tx is None or tx.skip:
            return
        self._note()
        pos = self.pos
        pos.lsn = m.end_lsn
        pos.tx_lsn, pos.tx_done = None, 0
        pos.retire_filters(m.commit_lsn)
        self.dirty = True
        if self.resnap is not None:
            self.resnap.committed(tx.meta.xid)
            self._release(m.end_lsn)

    def _next(self) -> tuple[_Tx, int] | None:
        """The open transaction and this change's ordinal, or ``None`` to skip it."""
        tx = self.tx
        if tx is None:
            raise DecodeError("pgoutput: change outside a transaction")
        index = tx.index
        tx.index += 1
        if tx.skip or index < tx.skip_below:
            return None
        return tx, index

    def _filtered(self, rel: RelationState, tx: _Tx, values: Any) -> bool:
        filters = self.pos.filters
        if not filters or not rel.captured:
            return False
        key = self.builder.key_texts(rel, values) if values is not None else None
        f = governing(filters, rel.qualified, key, lambda texts: self.builder.key_texts(
            rel, _spread(rel, texts)))
        return f is not None and self.tx_lsn < f.until and f.visible(tx.meta.xid)

    def _truncate_filtered(self, table: str, tx: _Tx) -> bool:
        """A truncate already reflected in a resumed snapshot of the whole table."""
        f = governing(self.pos.filters, table, None, None)
        return f is not None and self.tx_lsn < f.until and f.visible(tx.meta.xid)

    def _change(self, m: po.Insert | po.Update | po.Delete, lsn: int) -> None:
        step = self._next()
        if step is None:
            return
        tx, index = step
        rel = self.builder.rel(m.relation_oid)
        if rel.outbox:
            if isinstance(m, po.Insert):
                self._outbox(m, rel, tx, index, lsn)
            return
        if not rel.captured:
            return
        row = m.new if not isinstance(m, po.Delete) else (m.old or m.key)
        if self.resnap is not None and self.resnap.holds(rel.qualified):
            tuples = [m.key, m.old] if isinstance(m, po.Delete) else (
                [m.new] if isinstance(m, po.Insert) else [m.new, m.key, m.old])
            self.resnap.observe(rel, tx.meta.xid, [t.values for t in tuples if t is not None])
        if self._filtered(rel, tx, row.values if row is not None else None):
            return
        self._note()
        extra = {"lsn": po.lsn_to_str(lsn), "snapshot": False}
        try:
            event = self.builder.change(m, rel, tx.meta, index, extra)
            if event is not None:
                self.events.append(event)
        except (DecodeError, ValueError) as e:
            self._dead(m, rel, tx, index, lsn, e)

    def _outbox(self, m: po.Insert, rel: RelationState, tx: _Tx, index: int,
                lsn: int) -> None:
        """An outbox row: a routed message (malformed: a dead letter), never filtered."""
        self._note()
        try:
            self.messages.append(self.builder.outbox_message(rel, m.new.values))
        except ValueError as e:
            self._dead(m, rel, tx, index, lsn, e)

    def _dead(self, m: po.Insert | po.Update | po.Delete, rel: RelationState, tx: _Tx,
              index: int, lsn: int, e: Exception) -> None:
        self.dead.append(DeadLetter(
            self.name, f"{tx.meta.position}:{index}", f"{rel.qualified}: {e}",
            orjson.dumps({"table": rel.qualified, "op": type(m).__name__,
                          "values": _raw(m)}, default=str),
            context={"table": rel.qualified, "lsn": po.lsn_to_str(lsn)}))

    def _truncate(self, m: po.Truncate, lsn: int) -> None:
        tx = self.tx
        if tx is None:
            raise DecodeError("pgoutput: truncate outside a transaction")
        first = tx.index
        tx.index += len(m.relation_oids)
        if tx.skip:
            return
        extra = {"lsn": po.lsn_to_str(lsn), "snapshot": False}
        if self.resnap is not None and self.resnap.pending is not None:
            for oid in m.relation_oids:
                if self.resnap.holds(self.builder.rel(oid).qualified):
                    self.resnap.observe_truncate(tx.meta.xid)
        for index, ev in self.builder.truncates(m, tx.meta, first, extra):
            if ev is not None and index >= tx.skip_below and not self._truncate_filtered(
                    f"{ev.schema}.{ev.table}", tx):
                self._note()
                self.events.append(ev)

    def _logical(self, m: po.LogicalMessage, lsn: int) -> None:
        if m.prefix == RESET_PREFIX and m.transactional:
            self._reset(m.content.decode("utf-8", "replace"), lsn)
            return
        if m.prefix == HEARTBEAT_PREFIX:
            if self.tx is None:
                self.idle_end = max(self.idle_end, lsn)
                self._release(lsn)
            return
        if not m.transactional and self.tx is None:
            self._release(lsn)
        if m.transactional:
            step = self._next()
            if step is None:
                return
            meta, index = step[0].meta, step[1]
        else:
            meta, index = TxMeta(f"msg:{po.lsn_to_str(m.lsn)}", 0, int(time.time() * 1000)), 0
        if m.prefix not in self.prefixes:
            return
        self._note()
        try:
            content: Any = m.content.decode()
        except UnicodeDecodeError:
            content = m.content
        self.events.append(ChangeEvent(
            adapter=self.name, schema="_message", table=m.prefix, op="c",
            position=meta.position, index=index, key=None, before=None,
            after={"prefix": m.prefix, "content": content, "transactional": m.transactional},
            txid=meta.xid or None, ts_ms=meta.ts_ms,
            source_extra={"lsn": po.lsn_to_str(m.lsn), "snapshot": False}))


    def _reset(self, table: str, lsn: int) -> None:
        """A captured table came back (tables.py): a ``t`` for it, then a re-snapshot."""
        step = self._next()
        info = self.builder.tables.get(table)
        if step is None or info is None:
            return
        tx, index = step
        self._note()
        self.events.append(self.builder.event(
            self.builder.table_state(info), "t", tx.meta, index, None, None,
            {"lsn": po.lsn_to_str(lsn), "snapshot": False, "reason": "table re-created or "
             "put back in the publication: its rows follow as a re-snapshot"}))
        if self.on_reset is not None:
            self.on_reset(table)


def _spread(rel: RelationState, key_texts: list[str | None]) -> list[str | None]:
    """A stored key (key columns only) laid out as a full tuple, for ``key_texts``."""
    full: list[str | None] = [None] * len(rel.names)
    for i, v in zip(rel.key_idx, key_texts, strict=True):
        full[i] = v
    return full


def _raw(m: po.Insert | po.Update | po.Delete) -> list[Any]:
    tup = m.new if not isinstance(m, po.Delete) else (m.old or m.key)
    if tup is None:
        return []
    return [None if v is None else ("<unchanged toast>" if v is po.UNCHANGED_TOAST else v)
            for v in tup.values]
