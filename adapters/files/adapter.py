"""``type: files`` — the adapter the daemon sees; it delegates to the configured mode.

Modes (:mod:`cdc_bridge.adapters.files.modes`) share one shape: ``run(checkpoint)`` yields
:class:`~cdc_bridge.adapters.contract.ChangeBatch` objects whose checkpoint is the mode's position,
``acknowledge(checkpoint)`` does what may only happen after a commit (archiving a file,
swapping a snapshot), ``close()`` releases files. Blocking file work runs in worker
threads; the folder or file is polled every ``poll_interval`` (no inotify needed).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

from cdc_bridge.adapters.contract import AdapterContext, ChangeBatch, Checkpoint
from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.identity import header_safe_name
from cdc_bridge.adapters.files.modes.drop import DropMode
from cdc_bridge.adapters.files.modes.snapshot import SnapshotMode
from cdc_bridge.adapters.files.modes.tail import TailMode
from cdc_bridge.kernel.errors import FatalError, SourceUnavailable


class Mode(Protocol):
    def run(self, checkpoint: Checkpoint | None) -> AsyncIterator[ChangeBatch]: ...

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None: ...

    async def close(self) -> None: ...

    @property
    def lag(self) -> dict[str, float]: ...


class FilesAdapter:
    def __init__(self, config: FilesConfig, context: AdapterContext) -> None:
        self.name = config.name
        self.config = config
        self.log = logging.getLogger(f"cdc_bridge.adapter.{config.name}")
        self.mode: Mode
        #: Capturing (see the source contract).
        self.connected = False
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
        self.connected = True
        try:
            async for batch in self.mode.run(checkpoint):
                yield batch
        except OSError as e:  # a file vanished, a permission, a full disk: retry with back-off
            raise SourceUnavailable(
                f"adapter {self.name}: file error: {e.strerror or e} "
                f"({header_safe_name(str(e.filename or ''))})") from e
        finally:
            self.connected = False

    def lag(self) -> dict[str, float]:
        return dict(self.mode.lag)

    async def acknowledge(self, checkpoint: Checkpoint | None) -> None:
        await self.mode.acknowledge(checkpoint)

    async def close(self) -> None:
        self.connected = False
        await self.mode.close()
