"""``cdc-bridge reset-source -c FILE ADAPTER``: accept that a source starts over.

For an outbox that lost its memory (or was replaced, or restored from elsewhere) the
postgres source refuses to start beside a slot another outbox consumed (see
:mod:`cdc_bridge.adapters.postgres.identity`). This command is the explicit way out:
with the daemon stopped, it undoes what capture left at the source (a source that
implements ``SupportsReset``: the replication slot and the outbox mark) and deletes the
adapter's checkpoint from this outbox; its pending rows stay and are published. The
next start captures the source afresh (a new snapshot where the source takes one).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from cdc_bridge.adapters.contract import SupportsReset
from cdc_bridge.adapters.registry import AdapterContext, create
from cdc_bridge.config import load_config
from cdc_bridge.daemon.instance import running_daemon
from cdc_bridge.kernel.errors import BridgeError, ConfigError
from cdc_bridge.outbox.factory import open_store


def reset_source(config_path: Path, adapter: str) -> list[str]:
    """Do it; returns one line per action. Raises :class:`BridgeError` to refuse."""
    config = load_config(config_path)
    by_name = {a.name: a for a in config.adapter_configs}
    if adapter not in by_name:
        raise ConfigError([f"no adapter named {adapter!r} (known: "
                           f"{', '.join(sorted(by_name)) or 'none'})"])
    daemon = running_daemon(config.state_dir)
    if daemon is not None:
        raise BridgeError(f"the daemon of {config.state_dir} is running ({daemon.describe()})"
                          ": stop it first")
    store = open_store(config.outbox_url())
    try:
        context = AdapterContext(config.state_dir, config.nats.subject_prefix, store.store_id)
        source = create(by_name[adapter], context)
        lines = []
        if isinstance(source, SupportsReset):
            lines += asyncio.run(source.reset())
        forgot = store.forget(adapter)
        lines.append(f"outbox {store.store_id}: {'deleted' if forgot else 'no'} checkpoint "
                     f"of adapter {adapter}; the next start captures it afresh")
        return lines
    finally:
        store.close()


@click.command("reset-source")
@click.option("-c", "--config", "config_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="YAML config file.")
@click.argument("adapter")
def reset_command(config_path: Path, adapter: str) -> None:
    """Start ADAPTER over: drop its source-side state and its checkpoint (daemon stopped)."""
    try:
        for line in reset_source(config_path, adapter):
            click.echo(line)
    except ConfigError as e:
        for line in e.errors:
            click.echo(f"cdc-bridge reset-source: {line}", err=True)
        sys.exit(2)
    except BridgeError as e:
        click.echo(f"cdc-bridge reset-source: {e}", err=True)
        sys.exit(1)
