"""``mode: tail`` — follow one append-only file through rotation and truncation.

Every new complete line (or record: CSV quoted newlines join lines) becomes an
``op: c`` event; a line without its newline yet is left until it is complete.

Position: the checkpoint names the followed file by device, inode and a fingerprint of
its first bytes (:class:`~cdc_bridge.adapters.files.identity.HeadPrint`), with the byte offset and
line reached, and a per-adapter *generation* number bumped each time the adapter starts
on a new file or a truncated one. Event positions are ``<dev>-<ino>-g<gen>@<offset>``:
deterministic across re-reads, and never reused even when a truncated file or a new
file on a recycled inode holds different lines at the same offsets.

Each poll:

- rotation (the path now names another inode): the old file is still open; its
  remaining lines are read until it has been quiet for ``stable_for``, then its last
  unterminated line too, and only then does the new file start (old lines first);
- after a restart the old file is found again by inode in the same folder (e.g.
  ``app.log.1``); if it is gone, that is logged and the new file starts;
- truncation (size below the offset, or the first bytes changed: copy-truncate
  followed by new writes): reading restarts at byte 0 under a new generation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from cdc_bridge.adapters.contract import ChangeBatch, Checkpoint
from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.identity import HeadPrint, header_safe_name
from cdc_bridge.adapters.files.session import EventBuilder, FileSession
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter


class _Followed:
    """The file being followed: open handle, identity and reading session."""

    def __init__(self, config: FilesConfig, f: BinaryIO, st: os.stat_result, gen: int,
                 offset: int | None, line: int, head: HeadPrint) -> None:
        self.f = f
        self.dev, self.ino = st.st_dev, st.st_ino
        self.gen = gen
        self.head = head
        self.session = FileSession(config, Path(str(f.name)), offset, line, f=f)
        self.rotated_at: float | None = None
        self.last_size = st.st_size
        self.good = 0
        self.bad = 0

    @property
    def file_pos(self) -> str:
        return f"{self.dev:x}-{self.ino:x}-g{self.gen}"

    def state(self) -> dict[str, Any]:
        return {"dev": self.dev, "ino": self.ino, "gen": self.gen,
                "fp_len": self.head.length, "fp": self.head.digest,
                "offset": self.session.offset, "line": self.session.line}

    def close(self) -> None:
        self.f.close()


class TailMode:
    def __init__(self, config: FilesConfig, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.builder = EventBuilder(config)
        self.name = config.path.name
        self.followed: _Followed | None = None
        self.gen = 0
        #: Unread bytes of the followed file (the source's lag).
        self.lag: dict[str, float] = {}

    def _checkpoint(self) -> Checkpoint:
        return {"v": 1, "mode": "tail", "gen": self.gen,
                "file": self.followed.state() if self.followed else None}

    # --- blocking helpers (worker thread) -----------------------------------------

    def _open_path(self, first: bool) -> _Followed | None:
        """Start on the file at the path (``first``: the adapter's very first file)."""
        try:
            f = open(self.config.path, "rb", buffering=1 << 20)  # noqa: SIM115
        except FileNotFoundError:
            return None
        st = os.fstat(f.fileno())
        self.gen += 1
        offset = st.st_size if first and self.config.start_at == "end" else None
        return _Followed(self.config, f, st, self.gen, offset, 1,
                         HeadPrint.of(f.fileno()))

    def _resume(self, saved: dict[str, Any]) -> _Followed | None:
        """Re-open the checkpoint's file: at the path, or renamed beside it by rotation."""
        head = HeadPrint(saved["fp_len"], saved["fp"])
        for path in [self.config.path, *sorted(self.config.path.parent.iterdir())]:
            try:
                st = path.stat()
                if (st.st_dev, st.st_ino) != (saved["dev"], saved["ino"]):
                    continue
                f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115
            except OSError:
                continue
            if not head.matches(f.fileno()) or os.fstat(f.fileno()).st_size < saved["offset"]:
                f.close()
                break  # same inode, other content: truncated or recycled
            fol = _Followed(self.config, f, os.fstat(f.fileno()), saved["gen"],
                            saved["offset"], saved["line"], head)
            if path != self.config.path:
                fol.rotated_at = time.monotonic()
                self.log.info("resuming rotated file %s at byte %d",
                              header_safe_name(path.name), saved["offset"])
            return fol
        self.log.warning("file followed before the restart (inode %d) is gone or was "
                         "truncated; lines it got after byte %d cannot be read",
                         saved["ino"], saved["offset"])
        return None

    def _poll(self) -> tuple[list[ChangeEvent], list[DeadLetter], bool]:
        """Read what is new; handle rotation and truncation. Returns (events, dead, more)."""
        fol = self.followed
        if fol is None:
            self.followed = fol = self._open_path(self.gen == 0)
            if fol is None:
                return [], [], False
        fd = fol.f.fileno()
        size = os.fstat(fd).st_size
        if fol.rotated_at is None:
            try:
                st = self.config.path.stat()
                if (st.st_dev, st.st_ino) != (fol.dev, fol.ino):
                    fol.rotated_at = time.monotonic()
                    self.log.info("%s was rotated; draining the old file", self.name)
            except FileNotFoundError:
                pass
        if size < fol.session.offset or not fol.head.matches(fd):
            self.log.warning("%s was truncated at byte %d (%d good rows, %d bad rows before); "
                             "reading again from the start", self.name, fol.session.offset,
                             fol.good, fol.bad)
            self.gen += 1
            fol.close()
            f = open(fol.f.name, "rb", buffering=1 << 20)  # noqa: SIM115
            self.followed = fol = _Followed(self.config, f, os.fstat(f.fileno()), self.gen,
                                            None, 1, HeadPrint.of(f.fileno()))
            fd = fol.f.fileno()
        fol.head = fol.head.grown(fd, size)
        final = False
        if fol.rotated_at is not None:
            quiet = size == fol.last_size and (
                time.monotonic() - fol.rotated_at >= self.config.stable_for)
            final = quiet
        if size != fol.last_size and fol.rotated_at is not None:
            fol.rotated_at = time.monotonic()
        fol.last_size = size
        parsed, more = fol.session.read(self.config.batch_size, final=final)
        events, dead = self.builder.build(parsed, fol.file_pos, self.name)
        fol.good += len(events)
        fol.bad += len(dead)
        self.lag["bytes"] = float(max(0, size - fol.session.offset))
        if final and not more:
            self.log.info("finished rotated file at byte %d (%d good rows, %d bad rows); "
                          "following the new %s", fol.session.offset, fol.good, fol.bad,
                          self.name)
            fol.close()
            self.followed = None
            more = True  # open the new file right away
        return events, dead, more

    # --- async side ------------------------------------------------------------------

    async def run(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        cp = checkpoint or {}
        self.gen = int(cp.get("gen", 0))
        saved = cp.get("file")
        if saved:
            self.followed = await asyncio.to_thread(self._resume, saved)
        while True:
            fol_before = self.followed
            events, dead, more = await asyncio.to_thread(self._poll)
            if events or dead:
                yield ChangeBatch(events, self._checkpoint(), dead)
            elif self.followed is not fol_before:
                yield ChangeBatch([], self._checkpoint(), [])
            if not more:
                await asyncio.sleep(self.config.poll_interval)

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        return None

    async def close(self) -> None:
        if self.followed is not None:
            self.followed.close()
            self.followed = None
