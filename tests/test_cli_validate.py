"""``cdc-bridge validate`` (and the other commands' config check) as a user runs it:
a real process, exit code 2 and every error with its path on stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fast.test_config import GOOD


@pytest.mark.parametrize(("content", "needle"), [
    ("nats: [1, 2\n", "invalid YAML"),
    ("nats: {bogus: 1}\n", "nats.bogus: unknown key"),
    ("nats: {embedded: {port: many}}\n", "nats.embedded.port:"),
    ("adapters:\n  - {name: a, type: sql_poll, url: '${NOPE}', tables: [{name: t}]}\n",
     "adapters[0].url: environment variable NOPE is not set"),
])
def test_cli_validate_exit_2_with_path(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    for command in ("validate", "run"):
        proc = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", command, "-c", str(cfg)],
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert needle in proc.stderr, proc.stderr


def test_cli_validate_ok(tmp_path: Path) -> None:
    cfg = tmp_path / "good.yaml"
    cfg.write_text(GOOD)
    proc = subprocess.run([sys.executable, "-m", "cdc_bridge.cli", "validate", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
