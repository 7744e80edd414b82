"""``mode: snapshot`` — each new full extract is compared by key with the previous one.

For every new stable file (found like ``drop`` mode finds files, and archived, deleted
or left the same way):

1. *load*: the file streams into the ``stg`` table of the adapter's state SQLite
   (:mod:`cdc_bridge.adapters.files.modes.snapshot_store`), rows after column rules, keyed by the
   configured ``key`` columns; bad rows and duplicate keys go to ``stg_bad``. Nothing
   reaches the outbox in this phase; a crash during it reloads the file.
2. *diff*: dead letters first, then a key-ordered sort-merge of ``stg`` against ``cur``
   yields ``c`` (new key), ``u`` (changed row, with the before image) and ``d`` (key
   gone, before image) events. The very first extract has nothing to compare with: its
   rows are ``op: r`` (snapshot read). Batches carry checkpoint
   ``{"current": {"ident", "name", "phase": "diff", "bad_done", "last_key"}}``, so a
   restart continues the merge after the last committed key. Event positions are
   ``<ident>#<key>``: a re-read yields the same ids.
3. *swap*: after the file's last batch is committed, :meth:`SnapshotMode.acknowledge`
   makes ``stg`` the new ``cur`` (one SQLite transaction; redone on restart if the
   crash came first) and applies the after-action.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from cdc_bridge.adapters.contract import ChangeBatch, Checkpoint
from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.formats import RowError
from cdc_bridge.adapters.files.identity import header_safe_name
from cdc_bridge.adapters.files.modes.folder import Candidate, Folder, FolderRounds
from cdc_bridge.adapters.files.modes.snapshot_store import Change, SnapshotStore
from cdc_bridge.adapters.files.reader import RawRecord
from cdc_bridge.adapters.files.session import EventBuilder, FileSession
from cdc_bridge.adapters.transform import apply_rules
from cdc_bridge.kernel.events import ChangeEvent, dumps
from cdc_bridge.kernel.shapes import TableShape


class SnapshotMode(FolderRounds):
    def __init__(self, config: FilesConfig, log: logging.Logger, state_path: Path) -> None:
        self.config = config
        self.log = log
        self.folder = Folder(config, log)
        self.builder = EventBuilder(config)
        self.state_path = state_path
        self.store: SnapshotStore | None = None
        self.current: dict[str, Any] | None = None
        self.done: list[str] = []
        #: Whole extracts are compared: no byte lag to report.
        self.lag: dict[str, float] = {}

    def _checkpoint(self, completed: str | None = None) -> Checkpoint:
        return {"v": 1, "mode": "snapshot",
                "current": dict(self.current) if self.current else None,
                "done": list(self.done), "completed": completed}

    async def run(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        cp = checkpoint or {}
        self.current = cp.get("current")
        self.done = list(cp.get("done") or [])
        self.store = await asyncio.to_thread(SnapshotStore, self.state_path)
        staged = self.store.meta("staging")
        if staged and staged in self.done:  # committed, but the crash came before the swap
            await asyncio.to_thread(self.store.swap, staged)
        async for batch in self._rounds(self.config.poll_interval):
            yield batch

    # --- load -------------------------------------------------------------------------

    def _columns(self, cand: Candidate) -> tuple[str, ...] | None:
        """The extract's column layout (blocking): its header, or the configured one."""
        session = FileSession(self.config, cand.path, None, 1)
        try:
            return session.read_columns()
        finally:
            session.close()

    def _load(self, cand: Candidate) -> tuple[int, int]:
        """Stream the file into ``stg`` (blocking). Returns (good, bad) row counts."""
        store = self.store
        assert store is not None
        store.begin_load(cand.ident)
        session = FileSession(self.config, cand.path, None, 1)
        rf = self.builder.filter
        # A filter without op is applied here: a row leaving it is then missing from the
        # extract compared (a d with its before image), a row entering it new (a c).
        keep = rf.matches if rf is not None and not rf.uses_op else None
        good = bad = 0
        try:
            while True:
                parsed, more = session.read(self.config.batch_size, final=True)
                rows: list[tuple[str, bytes, int, int, bytes]] = []
                bads: list[tuple[int, int, str, bytes]] = []
                for p in parsed:
                    rec = p.record
                    try:
                        if p.row is None:
                            raise RowError(p.reason or "unparsable")
                        if keep is not None and not keep(p.row, "r"):
                            continue
                        key = self.builder.key_of(p.row)
                        row = apply_rules(p.row, self.config.columns)
                        rows.append((dumps(key).decode(), dumps(row), rec.offset, rec.line,
                                     rec.raw))
                    except RowError as e:
                        bads.append((rec.offset, rec.line, e.reason, rec.raw))
                dupes = store.load(rows, bads)
                good += len(rows) - len(dupes)
                bad += len(bads) + len(dupes)
                if not more:
                    break
        finally:
            session.close()
        store.finish_load()
        return good, bad

    # --- diff -------------------------------------------------------------------------

    async def _process(self, cand: Candidate) -> AsyncIterator[ChangeBatch]:
        store = self.store
        assert store is not None
        name = header_safe_name(cand.name)
        cur = self.current if self.current and self.current["ident"] == cand.ident else None
        if cur is None or not store.loaded(cand.ident):
            good, nbad = await asyncio.to_thread(self._load, cand)
            self.log.info("extract %s loaded: %d rows, %d bad rows", name, good, nbad)
            cur = {"ident": cand.ident, "name": cand.name, "phase": "diff",
                   "bad_done": 0, "last_key": None}
        else:
            self.log.info("resuming the comparison of extract %s", name)
        first = not store.has_base()
        # the extract's look: a header that gained a column is a new version before its rows
        shape = self.builder.shapes.get(await asyncio.to_thread(self._columns, cand))
        n = self.config.batch_size
        counts = {"c": 0, "u": 0, "d": 0, "r": 0, "bad": 0}
        while True:
            bad = await asyncio.to_thread(store.bad_page, cur["bad_done"], n)
            if not bad:
                break
            dead = [self.builder.dead_letter(cand.ident, cand.name,
                                             RawRecord(off, line, bytes(raw)), reason)
                    for _, off, line, reason, raw in bad]
            counts["bad"] += len(dead)
            cur = {**cur, "bad_done": bad[-1][0]}
            self.current = cur
            yield ChangeBatch([], self._checkpoint(), dead)
        while True:
            changes, last, finished = await asyncio.to_thread(store.diff, cur["last_key"], n)
            events = self._events(changes, cand, first, shape)
            for ev in events:
                counts[ev.op] += 1
            if not finished:
                cur = {**cur, "last_key": last}
                self.current = cur
                yield ChangeBatch(events, self._checkpoint())
                continue
            self.current = None
            self.done.append(cand.ident)
            yield ChangeBatch(events, self._checkpoint(completed=cand.ident))
            self.log.info("extract %s compared: %s", name,
                          ", ".join(f"{k}={v}" for k, v in counts.items()))
            return

    def _events(self, changes: list[Change], cand: Candidate, first: bool,
                shape: TableShape | None = None) -> list[ChangeEvent]:
        now = int(time.time() * 1000)
        table = self.config.table_for(cand.name)
        out = []
        rf = self.builder.filter
        routes = rf is not None and rf.uses_op
        for ch in changes:
            op = "r" if first and ch.op == "c" else ch.op
            before = None if ch.before is None else orjson.loads(ch.before)
            after = None if ch.after is None else orjson.loads(ch.after)
            if routes:  # a filter reading op: judged on the compared rows (crossing rule)
                assert rf is not None
                routed = rf.route(op, before, after)
                if routed is None:
                    continue
                op, before, after = routed[0], routed[1], routed[2]
            out.append(ChangeEvent(
                adapter=self.config.name, table=table, op=op,  # type: ignore[arg-type]
                position=f"{cand.ident}#{ch.key}", key=orjson.loads(ch.key),
                before=before, after=after,
                ts_ms=now, source_extra={"file": cand.name, "mode": "snapshot"},
                shape=shape))
        return out

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        ident = (checkpoint or {}).get("completed")
        if ident and self.store is not None:
            await asyncio.to_thread(self.store.swap, ident)
            await asyncio.to_thread(self.folder.after, ident)

    async def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

