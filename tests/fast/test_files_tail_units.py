"""``mode: tail`` resets, driven directly: a truncated or replaced file gives a ``t`` with
the same event id whether it is seen live, after a restart from the checkpoint before
it, or read again from that checkpoint (a ``kill -9`` before the commit); ``stop``
raises before anything of the new content; a rotation is no reset.

The end-to-end version, with a real nats-server and bridge process, is
``tests/test_files_tail_reset.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cdc_bridge.adapters.contract import ChangeBatch, Checkpoint
from cdc_bridge.adapters.files.config import FilesConfig
from cdc_bridge.adapters.files.modes.tail import TailMode
from cdc_bridge.kernel.errors import SourceSetupError

LOG = logging.getLogger("test.files.tail")


def tail_config(path: Path, **extra: Any) -> FilesConfig:
    return FilesConfig.model_validate({
        "name": "stock", "type": "files", "path": str(path), "mode": "tail",
        "key": ["sku"], "poll_interval": "50ms", "stable_for": 0, **extra})


class Tail:
    """A running :class:`TailMode` whose batches the test takes one at a time."""

    def __init__(self, config: FilesConfig, checkpoint: Checkpoint | None) -> None:
        self.mode = TailMode(config, LOG)
        self.batches: AsyncIterator[ChangeBatch] = self.mode.run(checkpoint)

    async def next_events(self) -> ChangeBatch:
        """The next batch that holds events."""
        while True:
            batch = await asyncio.wait_for(anext(self.batches), 10)
            if batch.events:
                return batch

    async def close(self) -> None:
        await self.mode.close()


def ops(batch: ChangeBatch) -> list[tuple[str, str | None]]:
    return [(e.op, e.key["sku"] if e.key else None) for e in batch.events]


async def from_checkpoint(config: FilesConfig, cp: Checkpoint | None) -> ChangeBatch:
    """A fresh adapter (a restart) started from ``cp``: its first batch with events."""
    tail = Tail(config, cp)
    try:
        return await tail.next_events()
    finally:
        await tail.close()


def test_truncate_gives_t_with_the_same_id_live_and_after_a_restart(tmp_path: Path) -> None:
    live = tmp_path / "stock.csv"
    live.write_bytes(b"sku,qty\nA,1\nB,2\nC,3\n")
    cfg = tail_config(live)

    async def go() -> None:
        tail = Tail(cfg, None)
        try:
            first = await tail.next_events()
            assert ops(first) == [("c", "A"), ("c", "B"), ("c", "C")]
            live.write_bytes(b"sku,qty\nA,9\n")  # truncated in place, shorter
            reset = await tail.next_events()
        finally:
            await tail.close()
        assert ops(reset) == [("t", None), ("c", "A")]
        t = reset.events[0]
        assert t.table == "stock" and t.source_extra["reason"] == "file truncated"
        assert t.position.endswith("@reset") and "-g2@" in t.position
        assert reset.checkpoint is not None and "reset" not in reset.checkpoint
        ids = [e.id for e in reset.events]
        # a restart from the checkpoint before the reset (the bridge was down, or killed
        # before the commit): the same t and rows, the same ids, twice
        for _ in range(2):
            again = await from_checkpoint(cfg, first.checkpoint)
            assert [e.id for e in again.events] == ids
        # from the reset's own checkpoint: no second t
        live.write_bytes(b"sku,qty\nA,9\nB,8\n")  # appended (rewritten, same head)
        after = await from_checkpoint(cfg, reset.checkpoint)
        assert ops(after) == [("c", "B")]

    asyncio.run(go())


def test_replaced_file_is_drained_then_t_with_the_same_id_on_every_path(
        tmp_path: Path) -> None:
    live = tmp_path / "stock.csv"
    live.write_bytes(b"sku,qty\nA,1\n")
    cfg = tail_config(live)

    async def go() -> None:
        tail = Tail(cfg, None)
        try:
            first = await tail.next_events()
            with open(live, "ab") as f:
                f.write(b"B,2")  # unterminated: taken when the old file is drained
            new = tmp_path / "stock.csv.new"
            new.write_bytes(b"sku,qty\nE,5\n")
            os.replace(new, live)  # the old file has no name left
            drained = await tail.next_events()
            reset = await tail.next_events()
        finally:
            await tail.close()
        assert ops(drained) == [("c", "B")]
        assert drained.checkpoint is not None and drained.checkpoint["reset"] == "replaced"
        assert ops(reset) == [("t", None), ("c", "E")]
        assert reset.events[0].source_extra["reason"] == "file replaced"
        ids = [e.id for e in reset.events]
        # restarts: after the drain was committed (the reset waits in the checkpoint), and
        # before it (the old file is gone: lost); both start the same file, same ids
        assert [e.id for e in (await from_checkpoint(cfg, drained.checkpoint)).events] == ids
        lost = await from_checkpoint(cfg, first.checkpoint)
        assert [e.id for e in lost.events] == ids
        assert lost.events[0].source_extra["reason"] == "file lost"

    asyncio.run(go())


def test_stop_raises_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    live = tmp_path / "stock.csv"
    live.write_bytes(b"sku,qty\nA,1\nB,2\n")
    cfg = tail_config(live, on_table_change="stop")

    async def go() -> Checkpoint | None:
        tail = Tail(cfg, None)
        try:
            first = await tail.next_events()
            live.write_bytes(b"sku,qty\nZ,1\n")
            with pytest.raises(SourceSetupError) as err:
                await tail.next_events()
        finally:
            await tail.close()
        text = str(err.value)
        assert str(live) in text and "on_table_change: stop" in text
        assert "set on_table_change: resnapshot and restart" in text
        # every start stops the same way: the checkpoint stays before the reset
        with pytest.raises(SourceSetupError):
            await from_checkpoint(cfg, first.checkpoint)
        return first.checkpoint

    cp = asyncio.run(go())
    # the fix the message names
    resumed = asyncio.run(from_checkpoint(tail_config(live), cp))
    assert ops(resumed) == [("t", None), ("c", "Z")]


def test_rotation_is_no_reset(tmp_path: Path) -> None:
    live = tmp_path / "app.csv"
    live.write_bytes(b"sku,qty\nA,1\n")

    async def go() -> None:
        tail = Tail(tail_config(live), None)
        try:
            await tail.next_events()
            os.rename(live, tmp_path / "app.csv.1")  # still has a name: a rotation
            live.write_bytes(b"sku,qty\nB,2\n")
            assert ops(await tail.next_events()) == [("c", "B")]
        finally:
            await tail.close()

    asyncio.run(go())


def test_on_table_change_is_for_tail_only(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="'on_table_change' applies to mode tail"):
        FilesConfig.model_validate({"name": "x", "type": "files", "path": str(tmp_path),
                                    "pattern": "*.csv", "mode": "snapshot", "key": ["id"],
                                    "on_table_change": "stop"})
    assert tail_config(tmp_path / "f.csv").on_table_change == "resnapshot"
