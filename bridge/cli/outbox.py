"""``cdc-bridge outbox -c FILE [--json]``: the outbox store's backlog, size and checkpoints.

Kept apart from :mod:`cdc_bridge.cli.main` (which registers it with one line); the logic lives
in :mod:`cdc_bridge.outbox.inspect`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cdc_bridge.config import load_config
from cdc_bridge.kernel.errors import ConfigError
from cdc_bridge.outbox.base import StoreUnavailable
from cdc_bridge.outbox.inspect import format_report, inspect_outbox


@click.command("outbox")
@click.option("-c", "--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="YAML config file.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def outbox_command(config_path: Path, as_json: bool) -> None:
    """Show the outbox: pending events, oldest age, size on disk, checkpoints."""
    try:
        config = load_config(config_path)
    except ConfigError as e:
        click.echo(f"{config_path}: configuration is invalid:", err=True)
        for line in e.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(2)
    try:
        data = inspect_outbox(config.outbox_url())
    except StoreUnavailable as e:
        click.echo(f"cdc-bridge outbox: {e}", err=True)
        sys.exit(1)
    click.echo(json.dumps(data, sort_keys=True) if as_json else format_report(data))
