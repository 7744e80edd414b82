"""A watched folder: glob, stability check, identities, remembered files, after-actions.

Shared by ``drop`` and ``snapshot`` modes; blocking methods run in a worker thread.

Stability: a file is ready when two consecutive scans saw the same size and mtime and
its mtime is at least ``stable_for`` old (with ``stable_for: 0`` one scan suffices), so
a file still being written is not read. Identities (see
:mod:`cdc_bridge.adapters.files.identity`) are cached per (dev, ino, size, mtime) so a folder of
finished files costs one ``stat`` each per scan.

Completed files are remembered by identity in the checkpoint: every completed file
still in the folder (so ``action: leave`` never reprocesses, whatever it is renamed
to), plus the last ``remember_files`` that left it (a file moved back from the archive
is recognised too). The list is thus bounded by the folder's content plus that number.
After-actions (archive, delete) run only once the file's last batch is committed; a
crash in between leaves the file in the folder, already remembered as done, so the next
scan applies the action without reading it again.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import shutil
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdc_bridge.adapters.contract import ChangeBatch
from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.identity import header_safe_name, stable_identity
from cdc_bridge.kernel.errors import SourceUnavailable


@dataclass(frozen=True, slots=True)
class Candidate:
    path: Path
    name: str
    ident: str
    size: int
    mtime_ns: int


class Folder:
    def __init__(self, config: FilesConfig, log: logging.Logger) -> None:
        self.config = config
        self.log = log
        self._seen: dict[str, tuple[int, int]] = {}
        self._idents: dict[tuple[int, int, int, int], str] = {}
        #: Where each identity was last seen (for after-actions on acknowledge).
        self.paths: dict[str, Path] = {}

    def scan(self) -> list[Candidate]:
        """Stable files matching the pattern, oldest first (mtime, then name)."""
        cfg = self.config
        pattern = cfg.pattern or "*"
        try:
            entries = list(os.scandir(cfg.path))
        except FileNotFoundError:
            raise SourceUnavailable(f"folder {cfg.path} does not exist") from None
        except OSError as e:
            raise SourceUnavailable(f"cannot list folder {cfg.path}: {e.strerror}") from None
        now = time.time()
        ready: list[Candidate] = []
        seen: dict[str, tuple[int, int]] = {}
        idents: dict[tuple[int, int, int, int], str] = {}
        for entry in entries:
            if not fnmatch.fnmatchcase(entry.name, pattern):
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue  # vanished between listing and stat
            if not stat.S_ISREG(st.st_mode):
                continue
            obs = (st.st_size, st.st_mtime_ns)
            seen[entry.name] = obs
            prev = self._seen.get(entry.name)
            if cfg.stable_for > 0 and (prev != obs or now - st.st_mtime_ns / 1e9 < cfg.stable_for):
                continue
            cache_key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            ident = self._idents.get(cache_key)
            if ident is None:
                try:
                    ident = stable_identity(Path(entry.path), st)
                except OSError:
                    continue
            idents[cache_key] = ident
            self.paths[ident] = Path(entry.path)
            ready.append(Candidate(Path(entry.path), entry.name, ident, st.st_size,
                                   st.st_mtime_ns))
        self._seen, self._idents = seen, idents
        ready.sort(key=lambda c: (c.mtime_ns, c.name))
        return ready

    def prune_done(self, done: list[str], present: set[str]) -> list[str]:
        """Done identities: all present in the folder plus the last N that left it."""
        gone = [i for i in done if i not in present]
        kept = gone[-self.config.remember_files:]
        return kept + [i for i in done if i in present]

    def after(self, ident: str) -> None:
        """Apply the configured after-action to a completed file (idempotent)."""
        cfg = self.config
        action = cfg.after.action
        path = self.paths.get(ident)
        if action == "leave" or path is None:
            return
        name = header_safe_name(path.name)
        try:
            if action == "delete":
                path.unlink(missing_ok=True)
                self.log.info("deleted %s", name)
            else:
                archive = cfg.archive_dir()
                assert archive is not None
                archive.mkdir(parents=True, exist_ok=True)
                target = archive / path.name
                if target.exists():
                    target = archive / f"{path.stem}.{ident.rsplit('-', 1)[-1]}{path.suffix}"
                if path.exists():
                    shutil.move(str(path), str(target))
                    self.log.info("archived %s to %s", name, header_safe_name(str(target)))
        except OSError as e:
            # the file stays remembered as done: the next scan tries again
            self.log.warning("could not %s %s: %s", action, name, e.strerror)
        self.paths.pop(ident, None)


class FolderRounds:
    """The scan loop shared by ``drop`` and ``snapshot`` modes.

    Each round lists the folder, forgets completed files that left it, finishes the
    after-action of files completed before a crash, then processes the others (the file
    being read at the last checkpoint first). Subclasses provide :meth:`_process` and
    keep ``current``/``done`` in their checkpoints.
    """

    folder: Folder
    log: logging.Logger
    current: dict[str, Any] | None
    done: list[str]

    def _process(self, cand: Candidate) -> AsyncIterator[ChangeBatch]:
        raise NotImplementedError

    async def _rounds(self, poll_interval_s: float) -> AsyncIterator[ChangeBatch]:
        while True:
            candidates = await asyncio.to_thread(self.folder.scan)
            present = {c.ident for c in candidates}
            done = set(self.done)
            self.done = self.folder.prune_done(self.done, present)
            if self.current and self.current["ident"] not in present:
                self.log.warning("file %s was being read and is no longer in the folder",
                                 self.current.get("name"))
            current = self.current["ident"] if self.current else None
            candidates.sort(key=lambda c: c.ident != current)
            for cand in candidates:
                if cand.ident in done:
                    await asyncio.to_thread(self.folder.after, cand.ident)
                    continue
                async for batch in self._process(cand):
                    yield batch
            await asyncio.sleep(poll_interval_s)
