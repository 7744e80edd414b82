"""Pure logic of re-snapshots: visibility, the chunk hold (stale keys, redo), progress
and checkpoint round trips (postgres), and the diff-mode full pass (sql_poll)."""

from __future__ import annotations

from cdc_bridge.adapters.postgres.position import Position
from cdc_bridge.adapters.postgres.resnap_state import (
    PendingChunk,
    ResnapProgress,
    Visibility,
    release,
)
from cdc_bridge.adapters.sql_poll.diff import SourceRow, snapshot_chunk
from cdc_bridge.adapters.sql_poll.diff_state import Stored


def _chunk(rows: dict[tuple[str, ...], list[str | None]], exhausted: bool = False
           ) -> PendingChunk:
    last = max(rows) if rows else None
    return PendingChunk("public.t", Visibility.parse("100:110:103,105"), 0x500, rows, last,
                        exhausted)


def test_visibility_and_behind() -> None:
    vis = Visibility.parse("100:110:103,105")
    assert vis.visible(104) and not vis.visible(103) and not vis.visible(110)
    # settled (below xmin) or visible: fine; in progress or newer: the snapshot is behind
    assert vis.behind([50, 99, 104, 109]) == []
    assert vis.behind([104, 105, 111]) == [105, 111]
    wrapped = Visibility.parse(f"{2**32 - 3}:{2**32 + 4}:")
    assert wrapped.visible(2) and wrapped.visible(2**32 - 2) and not wrapped.visible(4)


def test_chunk_release_holds_back_stale_keys_and_retries_them() -> None:
    rows: dict[tuple[str, ...], list[str | None]] = {
        ("1",): ["1", "a"], ("2",): ["2", "b"], ("3",): ["3", "c"]}
    chunk = _chunk(rows)
    chunk.observe(104, [("1",)])  # visible in S: older than the row read, no effect
    chunk.observe(111, [("2",)])  # not visible: newer, the r of 2 would be stale
    chunk.observe(111, [("9",)])  # a key not held
    assert not chunk.passed(0x4FF) and chunk.passed(0x500)
    progress = ResnapProgress(1, 1, tables=["public.t"], current="public.t")
    out = release(chunk, progress)
    assert [k for k, _ in out.rows] == [("1",), ("3",)]
    assert progress.retry == [["2"]] and progress.after == ["3"] and progress.rows == 2
    assert not out.table_finished
    # the next chunk (retry + the rest, exhausted) with no stale key finishes the table
    out = release(_chunk({("2",): ["2", "b2"]}, exhausted=True), progress)
    assert out.table_finished and progress.retry == [] and progress.rows == 3


def test_invisible_truncate_or_unknown_key_redoes_the_chunk() -> None:
    for kind in ("truncate", "unknown key"):
        chunk = _chunk({("1",): ["1", "a"]})
        if kind == "truncate":
            chunk.observe_truncate(105)  # in progress at S: not visible
        else:
            chunk.observe(111, [None])  # started after S
        assert chunk.redo, kind
        progress = ResnapProgress(1, 1, tables=["public.t"], current="public.t",
                                  after=["0"])
        out = release(chunk, progress)
        assert out.rows == [] and progress.after == ["0"] and progress.rows == 0
    chunk = _chunk({("1",): ["1", "a"]})
    chunk.observe_truncate(104)  # visible: the chunk was read after it, nothing to redo
    assert not chunk.redo


def test_progress_merge_finish_and_checkpoint_round_trip() -> None:
    p = ResnapProgress(3, 2, tables=["public.a", "public.b"])
    p.table_done("public.a")
    p.merge(["public.a", "public.c"])
    assert p.remaining() == ["public.a", "public.b", "public.c"]
    pos = Position(lsn=0x100, gen=2, resnapshot=p)
    raw = pos.to_checkpoint()
    back = Position.from_checkpoint(raw)
    assert back is not None and back.to_checkpoint() == raw
    for t in list(p.remaining()):
        p.table_done(t)
    assert p.finished and p.remaining() == []
    old = Position.from_checkpoint({"lsn": "0/10"})  # checkpoints from before re-snapshots
    assert old is not None and old.resnapshot is None and "resnapshot" not in old.to_checkpoint()


def test_diff_full_pass_emits_every_row_and_writes_only_changes() -> None:
    rows = [SourceRow("k1", b"h1", b"i1"), SourceRow("k2", b"h2", b"i2"),
            SourceRow("k3", b"h3", b"i3")]
    stored = {"k1": Stored(b"h1", b"i1"), "k2": Stored(b"old", b"i0"), "k3": Stored(None, None)}
    changes, writes = snapshot_chunk(rows, stored)
    assert [(c.op, c.key, c.before, c.after) for c in changes] == [
        ("r", "k1", None, b"i1"), ("r", "k2", None, b"i2"), ("r", "k3", None, b"i3")]
    assert [w.key for w in writes] == ["k2", "k3"]
    _, no_images = snapshot_chunk(rows, {}, keep_images=False)
    assert all(w.image is None for w in no_images)
