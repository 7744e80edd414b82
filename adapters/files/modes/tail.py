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

- rotation (the path now names another inode, and the old file is still linked: it was
  renamed, e.g. to ``app.log.1``): the old file is still open; its remaining lines are
  read until it has been quiet for ``stable_for``, then its last unterminated line too,
  and only then does the new file start (old lines first). The log goes on: no reset;
- after a restart the old file is found again by inode in the same folder (e.g.
  ``app.log.1``);
- a *reset*: what was read no longer describes the file, so a consumer folding the
  events must start again. Four ways: truncated (size below the offset), rewritten (the
  first bytes changed: copy-truncate followed by new writes), replaced (the path names
  another inode and the old one has no link left: deleted, or overwritten by
  ``os.replace``; its unread lines are drained first, as for a rotation) and lost (after
  a restart the checkpoint's file is gone or was changed meanwhile).

A reset is never silent. ``on_table_change: resnapshot`` (the default) starts the file
at the path from byte 0 under a new generation and sends first one ``op: t`` event for
its table at position ``<dev>-<ino>-g<gen>@reset``; the generation is the checkpoint's
plus one and the file the same, so a re-read after ``kill -9`` gives the same event id.
``stop`` raises :class:`~cdc_bridge.kernel.errors.SourceSetupError` before anything of
the new content is read (the daemon stops with the reason and the fix). A reset found
but not yet acted on (a replaced file drained, no new file yet) is kept in the
checkpoint (``"reset"``), so a restart in between acts on it all the same.
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
from cdc_bridge.kernel.errors import SourceSetupError
from cdc_bridge.kernel.events import ChangeEvent, DeadLetter

#: Reset kinds (the checkpoint's ``"reset"``): the ``t`` event's ``source.reason`` and
#: what happened, for log lines and the ``stop`` error.
RESETS: dict[str, tuple[str, str]] = {
    "truncated": ("file truncated", "got shorter than the byte offset already read"),
    "rewritten": ("file rewritten", "was rewritten in place (its first bytes changed)"),
    "replaced": ("file replaced", "was replaced: another file took its path and the one "
                 "read until now was deleted or overwritten (not renamed, so no rotation)"),
    "lost": ("file lost", "followed before the restart is gone or was changed while the "
             "bridge was down (lines it got after the committed offset cannot be read)"),
}


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
        #: Another file took the path and this one has no link left (not a rotation).
        self.replaced = False
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
    """Follows ``config.path``; blocking work runs in worker threads (see the module)."""

    def __init__(self, config: FilesConfig, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self.builder = EventBuilder(config)
        self.name = config.path.name
        self.followed: _Followed | None = None
        self.gen = 0
        #: A reset found and not yet acted on (a key of :data:`RESETS`).
        self.reset: str | None = None
        #: Unread bytes of the followed file (the source's lag).
        self.lag: dict[str, float] = {}

    def _checkpoint(self) -> Checkpoint:
        return {"v": 1, "mode": "tail", "gen": self.gen,
                "file": self.followed.state() if self.followed else None,
                **({"reset": self.reset} if self.reset else {})}

    def _stop_error(self, kind: str) -> SourceSetupError:
        path = header_safe_name(str(self.config.path))
        return SourceSetupError(
            f"adapter {self.config.name}: {path} {RESETS[kind][1]} (on_table_change: stop); "
            "nothing of its new content was sent. To go on, set on_table_change: resnapshot "
            f"and restart: a t event for table {self.config.table_for(self.name)} is sent, "
            "then the file is read from its start")

    def _reset_event(self, fol: _Followed, kind: str) -> ChangeEvent:
        """The ``t`` that goes before the first line of the new content."""
        return ChangeEvent(adapter=self.config.name, table=self.config.table_for(self.name),
                           op="t", position=f"{fol.file_pos}@reset", key=None,
                           ts_ms=int(time.time() * 1000),
                           source_extra={"file": self.name, "reason": RESETS[kind][0]})

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

    def _start_next(self) -> tuple[_Followed | None, list[ChangeEvent]]:
        """Start on the file at the path; after a reset, ``stop`` raises and
        ``resnapshot`` gives the ``t`` event to send before its first line."""
        kind = self.reset
        if kind is not None and self.config.on_table_change == "stop":
            raise self._stop_error(kind)
        fol = self._open_path(self.gen == 0)
        if fol is None or kind is None:
            return fol, []
        self.reset = None
        self.log.warning("%s %s: sending t for table %s, then the file from its start",
                         self.name, RESETS[kind][1], self.config.table_for(self.name))
        return fol, [self._reset_event(fol, kind)]

    def _resume(self, saved: dict[str, Any]) -> _Followed | None:
        """Re-open the checkpoint's file: at the path, or renamed beside it by rotation.

        None when it is gone or changed: a reset, kept in :attr:`reset`."""
        head = HeadPrint(saved["fp_len"], saved["fp"])
        kind = "lost"
        for path in [self.config.path, *sorted(self.config.path.parent.iterdir())]:
            try:
                st = path.stat()
                if (st.st_dev, st.st_ino) != (saved["dev"], saved["ino"]):
                    continue
                f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115
            except OSError:
                continue
            # same inode, other content: truncated, rewritten or recycled
            if os.fstat(f.fileno()).st_size < saved["offset"]:
                kind = "truncated"
            elif not head.matches(f.fileno()):
                kind = "rewritten"
            else:
                fol = _Followed(self.config, f, os.fstat(f.fileno()), saved["gen"],
                                saved["offset"], saved["line"], head)
                if path != self.config.path:
                    fol.rotated_at = time.monotonic()
                    self.log.info("resuming rotated file %s at byte %d",
                                  header_safe_name(path.name), saved["offset"])
                return fol
            f.close()
            break
        self.log.warning("file followed before the restart (inode %d) is gone or was "
                         "truncated; lines it got after byte %d cannot be read",
                         saved["ino"], saved["offset"])
        self.reset = kind
        return None

    def _watch_path(self, fol: _Followed) -> None:
        """Has the path been given to another file? Rotation, or replacement when the
        followed file has no name left (deleted, or overwritten by a rename)."""
        if fol.rotated_at is not None:
            return
        try:
            st = self.config.path.stat()
        except FileNotFoundError:
            return  # deleted, nothing new yet: keep reading the open file
        if (st.st_dev, st.st_ino) != (fol.dev, fol.ino):
            fol.rotated_at = time.monotonic()
            fol.replaced = os.fstat(fol.f.fileno()).st_nlink == 0
            self.log.info("%s was %s; draining the old file", self.name,
                          "replaced (the old file has no name left)" if fol.replaced
                          else "rotated")

    def _poll(self) -> tuple[list[ChangeEvent], list[DeadLetter], bool]:
        """Read what is new; handle rotation and resets. Returns (events, dead, more)."""
        fol = self.followed
        resets: list[ChangeEvent] = []
        if fol is None:
            self.followed, resets = self._start_next()
            fol = self.followed
            if fol is None:
                return [], [], False
        fd = fol.f.fileno()
        size = os.fstat(fd).st_size
        self._watch_path(fol)
        changed = not fol.head.matches(fd)
        if changed:  # the size again: a truncate-and-write may have come between the two
            size = os.fstat(fd).st_size
        truncated = size < fol.session.offset
        if truncated or changed:
            self.log.warning("%s was %s at byte %d (%d good rows, %d bad rows before)",
                             self.name, "truncated" if truncated else "rewritten",
                             fol.session.offset, fol.good, fol.bad)
            self.reset = "truncated" if truncated else "rewritten"
            fol.close()
            self.followed = None
            self.followed, resets = self._start_next()
            fol = self.followed
            if fol is None:  # gone meanwhile: the reset waits in the checkpoint
                return [], [], False
            fd = fol.f.fileno()
            size = os.fstat(fd).st_size
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
        events, dead = self.builder.build(parsed, fol.file_pos, self.name,
                                          columns=fol.session.columns())
        fol.good += len(events)
        fol.bad += len(dead)
        if resets:
            events[:0] = resets
        self.lag["bytes"] = float(max(0, size - fol.session.offset))
        if final and not more:
            self.log.info("finished the old file at byte %d (%d good rows, %d bad rows); "
                          "following the new %s", fol.session.offset, fol.good, fol.bad,
                          self.name)
            fol.close()
            self.followed = None
            if fol.replaced:
                self.reset = "replaced"
            more = True  # open the new file right away
        return events, dead, more

    # --- async side ------------------------------------------------------------------

    async def run(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        cp = checkpoint or {}
        self.gen = int(cp.get("gen", 0))
        self.reset = cp.get("reset")
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
