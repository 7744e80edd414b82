"""Conformance harness of ``type: files``: ``mode: drop`` on a folder of CSV files.

``write(n)`` drops one new file of n records (written under a name the pattern does not
match, then renamed, as a careful exporter does, so ``stable_for: 0`` is safe); files are
archived once their last batch is acknowledged. ``batch_size: 3`` reads a file of more
than three records in several batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.kernel.events import ChangeEvent
from tests.conformance import Denied, Item, NotApplicable

SOURCE_TYPE = "files"


class FilesHarness:
    source_type = SOURCE_TYPE

    def __init__(self, workdir: Path) -> None:
        self.folder = workdir / "drop"
        self.folder.mkdir(parents=True)
        self.workdir = workdir
        self.next_id = 1
        self.files = 0

    def _config(self, name: str, folder: Path) -> FilesConfig:
        return FilesConfig.model_validate({
            "name": name, "type": "files", "path": str(folder), "pattern": "*.csv",
            "format": "csv", "mode": "drop", "key": ["id"], "types": {"id": "int"},
            "after": {"action": "archive", "archive_dir": "done"},
            "poll_interval": "100ms", "stable_for": 0, "batch_size": 3})

    def config(self, name: str) -> FilesConfig:
        return self._config(name, self.folder)

    def _write(self, ids: list[int]) -> None:
        self.files += 1
        name = f"export-{self.files:04d}.csv"
        part = self.folder / (name + ".part")
        part.write_text("id,v\n" + "".join(f"{i},row {i}\n" for i in ids))
        os.replace(part, self.folder / name)

    async def write(self, n: int) -> list[str]:
        ids = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        await asyncio.to_thread(self._write, ids)
        return [str(i) for i in ids]

    def key(self, item: Item) -> str:
        assert isinstance(item, ChangeEvent), f"not a row change: {item!r}"
        assert item.after is not None, f"no row in {item!r}"
        return str(item.after["id"])

    def unreachable(self, name: str) -> FilesConfig:
        return self._config(name, self.workdir / "unmounted" / "drop")

    async def released(self) -> None:
        return None

    async def no_privilege(self, name: str) -> Sequence[Denied] | NotApplicable:
        if os.geteuid() == 0:
            return NotApplicable("the tests run as root, which reads and lists every file "
                                 "and folder whatever their permissions")
        locked = self.workdir / "locked"
        locked.mkdir()
        (locked / "a.csv").write_text("id,v\n1,x\n")
        locked.chmod(0)
        return [Denied("folder the bridge may not list",
                       self._config(name, locked), r"(?i)permission denied")]


@contextlib.asynccontextmanager
async def open_harness(request: pytest.FixtureRequest, workdir: Path
                       ) -> AsyncIterator[FilesHarness]:
    harness = FilesHarness(workdir / "files")
    try:
        yield harness
    finally:
        locked = harness.workdir / "locked"
        if locked.exists():
            locked.chmod(0o755)  # so that pytest can remove tmp_path
