"""What every command does first: load the config file, or say why not and exit 2."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cdc_bridge.config import BridgeConfig, load_config
from cdc_bridge.kernel.errors import ConfigError


def load_or_exit(path: Path) -> BridgeConfig:
    """The parsed config, or every problem with its path on stderr and exit code 2."""
    try:
        return load_config(path)
    except ConfigError as e:
        click.echo(f"{path}: configuration is invalid:", err=True)
        for line in e.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(2)
