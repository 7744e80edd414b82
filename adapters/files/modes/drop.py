"""``mode: drop`` — each new file in a folder is read once, then archived, deleted or left.

Checkpoint (JSON, committed with each batch)::

    {"v": 1, "mode": "drop",
     "current": {"ident": ..., "name": ..., "offset": ..., "line": ..., "good": n, "bad": m},
     "done": [ident, ...],            # completed files (see cdc_bridge.adapters.files.modes.folder)
     "completed": ident | null}       # set on a file's last batch, for acknowledge()

A batch of a file holds up to ``batch_size`` records; its checkpoint is the byte offset
and line just after them, so a restart (even after ``kill -9``) re-opens the file by
identity (whatever its name is by then) and continues at that offset. The file's last
batch moves it from ``current`` to ``done``; only when that batch is committed does
:meth:`DropMode.acknowledge` archive or delete it. Each row becomes an ``op: c`` event
at position ``<ident>@<offset>``; bad rows become dead letters at the same kind of
position. Good and bad counts are logged per file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from cdc_bridge.adapters.contract import ChangeBatch, Checkpoint
from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.identity import header_safe_name
from cdc_bridge.adapters.files.modes.folder import Candidate, Folder, FolderRounds
from cdc_bridge.adapters.files.session import EventBuilder, FileSession


class DropMode(FolderRounds):
    def __init__(self, config: FilesConfig, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.folder = Folder(config, log)
        self.builder = EventBuilder(config)
        self.current: dict[str, Any] | None = None
        self.done: list[str] = []
        self.session: FileSession | None = None
        #: Unread bytes of the file being read (the source's lag).
        self.lag: dict[str, float] = {}

    def _checkpoint(self, completed: str | None = None) -> Checkpoint:
        return {"v": 1, "mode": "drop", "current": dict(self.current) if self.current else None,
                "done": list(self.done), "completed": completed}

    async def run(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        cp = checkpoint or {}
        self.current = cp.get("current")
        self.done = list(cp.get("done") or [])
        async for batch in self._rounds(self.config.poll_interval):
            yield batch

    async def _process(self, cand: Candidate) -> AsyncIterator[ChangeBatch]:
        cur = self.current if self.current and self.current["ident"] == cand.ident else None
        offset = cur["offset"] if cur else None
        line = cur["line"] if cur else 1
        good = cur.get("good", 0) if cur else 0
        bad = cur.get("bad", 0) if cur else 0
        name = header_safe_name(cand.name)
        if cur:
            self.log.info("resuming %s at byte %d (line %d)", name, offset, line)
        session = await asyncio.to_thread(FileSession, self.config, cand.path, offset, line)
        self.session = session
        try:
            while True:
                parsed, more = await asyncio.to_thread(
                    session.read, self.config.batch_size, final=True)
                events, dead = self.builder.build(parsed, cand.ident, cand.name,
                                                  columns=session.columns())
                good += len(events)
                bad += len(dead)
                self.lag["bytes"] = float(cand.size - session.offset)
                if more:
                    self.current = {"ident": cand.ident, "name": cand.name,
                                    "offset": session.offset, "line": session.line,
                                    "good": good, "bad": bad}
                    yield ChangeBatch(events, self._checkpoint(), dead)
                    continue
                self.current = None
                self.done.append(cand.ident)
                yield ChangeBatch(events, self._checkpoint(completed=cand.ident), dead)
                level = logging.WARNING if bad else logging.INFO
                self.log.log(level, "file %s done: %d good rows, %d bad rows (dead-lettered)",
                             name, good, bad)
                return
        finally:
            self.session = None
            await asyncio.to_thread(session.close)

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        ident = (checkpoint or {}).get("completed")
        if ident:
            await asyncio.to_thread(self.folder.after, ident)

    async def close(self) -> None:
        if self.session is not None:
            self.session.close()
