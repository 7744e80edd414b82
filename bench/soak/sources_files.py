"""The soak's ``type: files`` source: a drop folder, a snapshot folder and a probe folder.

- ``soakfdrop`` (``mode: drop``): the writer drops CSV files of new rows (an
  :class:`~bench.soak.workload.AppendLog`); every row must arrive once (``exact``).
  Files are written under a temporary name and renamed into the pattern, as a careful
  exporter would, and deleted by the adapter once committed (``after: delete``).
- ``soakfsnap`` (``mode: snapshot``): after each few transactions of a
  :class:`~bench.soak.workload.KeySpace` the writer drops a full extract; the adapter
  diffs consecutive extracts into ``c``/``u``/``d`` (the first one as ``r``). Checked by
  ``state``: changes between two extracts are invisible by design.
- ``soakfprobe`` (``mode: drop``): one file with one row per probe.

There is no server to restart nor connection to cut: the file faults are the bridge's
``kill -9`` in the middle of a file, and a full outbox disk.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from bench.soak.sources import PROBE_TABLE, Source, TableSpec, _tx_size
from bench.soak.workload import AppendLog, KeySpace
from bench.soak.writers import WriterThread


def _atomic_write(folder: Path, name: str, lines: list[str]) -> None:
    tmp = folder / f".{name}.part"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, folder / name)


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


class FilesSource(Source):
    def __init__(self, root: Path, rng: random.Random, *, n_keys: int, rate: float,
                 adapter: str = "soakfdrop") -> None:
        super().__init__("files", adapter)
        self.rng = rng
        self.root = root
        self.dirs = {k: root / k for k in ("drop", "snap", "probe")}
        self.appends = AppendLog()
        self.snap = KeySpace(random.Random(rng.random()), n_keys)
        self.rate = rate
        self.files_written = 0
        self.snap_adapter = "soakfsnap"
        self.probe_adapter = "soakfprobe"
        self.tables = [
            TableSpec("files:soak_drop(drop)", adapter, "soak_drop", "exact",
                      self.appends.history, self.appends.state),
            TableSpec("files:soak_snap(snapshot)", self.snap_adapter, "soak_snap", "state",
                      lambda: self.snap.history, lambda: dict(self.snap.state)),
            TableSpec("files:soak_probe(drop)", self.probe_adapter, PROBE_TABLE, "exact",
                      self.probes.history, self.probes.state),
        ]

    def setup(self) -> None:
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        sizes = _tx_size(random.Random(self.rng.random()), 15)
        self.writers = [WriterThread("files-drop", lambda: self._drop(sizes()), self.rate / 4),
                        WriterThread("files-snapshot", self._snapshot, self.rate / 10)]

    def _drop(self, n: int) -> None:
        ids = self.appends.propose(n)
        payload = _csv_field("drop row, \"quoted\" é✓")
        lines = ["id,v,payload", *(f"{i},1,{payload}" for i in ids)]
        _atomic_write(self.dirs["drop"], f"drop-{ids[0]:09d}.csv", lines)
        self.appends.commit(ids)

    def _snapshot(self) -> None:
        for _ in range(self.rng.randint(1, 4)):
            self.snap.commit(self.snap.propose(self.rng.randint(1, 6)))
        self.files_written += 1
        lines = ["id,v,payload"]
        for key in sorted(self.snap.state):
            lines.append(f"{key},{self.snap.state[key]},{_csv_field('v' + str(key))}")
        _atomic_write(self.dirs["snap"], f"extract-{self.files_written:07d}.csv", lines)

    def write_probe(self) -> int:
        ids = self.probes.propose(1)
        _atomic_write(self.dirs["probe"], f"probe-{ids[0]:07d}.csv",
                      ["id,v", f"{ids[0]},1"])
        self.probes.commit(ids)
        return len(self.probes.written)

    def probe_subject(self, prefix: str) -> str:
        return f"{prefix}.{self.probe_adapter}.*.{PROBE_TABLE}.>"

    def adapter_configs(self) -> list[dict[str, Any]]:
        common = {"type": "files", "format": "csv", "pattern": "*.csv", "key": ["id"],
                  "types": {"id": "int", "v": "int"}, "poll_interval": "200ms",
                  "stable_for": "0s"}
        return [
            {"name": self.adapter, "path": str(self.dirs["drop"]), "mode": "drop",
             "table": "soak_drop", "after": {"action": "delete"}, **common},
            {"name": self.snap_adapter, "path": str(self.dirs["snap"]), "mode": "snapshot",
             "table": "soak_snap", "after": {"action": "delete"}, **common},
            {"name": self.probe_adapter, "path": str(self.dirs["probe"]), "mode": "drop",
             "table": PROBE_TABLE, "after": {"action": "delete"}, **common},
        ]
