"""``type: files`` — the adapter the daemon sees; it delegates to the configured mode.

Modes (:mod:`adapters.files.modes`) share one shape: ``run(checkpoint)`` yields
:class:`~adapters.base.ChangeBatch` objects whose checkpoint is the mode's position,
``acknowledge(checkpoint)`` does what may only happen after a commit (archiving a file,
swapping a snapshot), ``close()`` releases files. Blocking file work runs in worker
threads; the folder or file is polled every ``poll_interval`` (no inotify needed).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

from adapters.base import AdapterConfig, AdapterContext, AdapterType, ChangeBatch, Checkpoint
from adapters.files.config import FilesConfig
from adapters.files.identity import header_safe_name
from adapters.files.modes.drop import DropMode
from adapters.files.modes.snapshot import SnapshotMode
from adapters.files.modes.tail import TailMode
from bridge.errors import FatalError, SourceUnavailable
from bridge.metrics import ADAPTER_UP


class Mode(Protocol):
    def run(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]: ...

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None: ...

    async def close(self) -> None: ...


class FilesAdapter:
    def __init__(self, config: FilesConfig, context: AdapterContext) -> None:
        self.name = config.name
        self.config = config
        self.log = logging.getLogger(f"cdc_bridge.adapter.{config.name}")
        self.mode: Mode
        if config.mode == "drop":
            self.mode = DropMode(config, self.log)
        elif config.mode == "tail":
            self.mode = TailMode(config, self.log)
        else:
            self.mode = SnapshotMode(config, self.log,
                                     context.state_dir / "files" / f"{config.name}.snapshot.db")

    async def changes(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]:
        if checkpoint is not None and checkpoint.get("mode") != self.config.mode:
            raise FatalError(
                f"adapter {self.name}: the stored checkpoint is for mode "
                f"{checkpoint.get('mode')!r}, config says {self.config.mode!r}; "
                "reset the checkpoint to switch modes")
        ADAPTER_UP.labels(self.name).set(1)
        try:
            async for batch in self.mode.run(checkpoint):
                yield batch
        except OSError as e:  # a file vanished, a permission, a full disk: retry with back-off
            raise SourceUnavailable(
                f"adapter {self.name}: file error: {e.strerror or e} "
                f"({header_safe_name(str(e.filename or ''))})") from e
        finally:
            ADAPTER_UP.labels(self.name).set(0)

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        await self.mode.acknowledge(checkpoint)

    async def close(self) -> None:
        await self.mode.close()


def _factory(config: AdapterConfig, context: AdapterContext) -> FilesAdapter:
    assert isinstance(config, FilesConfig)
    return FilesAdapter(config, context)


ADAPTER_TYPE = AdapterType("files", FilesConfig, _factory)
