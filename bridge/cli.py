"""The ``cdc-bridge`` command line (click).

Exit codes: 0 success; 1 runtime failure (a fatal error while running); 2 invalid
configuration or usage, with every problem printed on its own line with its path.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click

from bridge import __version__
from bridge.config import BridgeConfig, load_config
from bridge.errors import ConfigError, FatalError
from bridge.logs import setup_logging

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", required=True,
    type=click.Path(dir_okay=False, path_type=Path), help="YAML config file.",
)


def _load_or_exit(path: Path) -> BridgeConfig:
    try:
        return load_config(path)
    except ConfigError as e:
        click.echo(f"{path}: configuration is invalid:", err=True)
        for line in e.errors:
            click.echo(f"  {line}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cdc-bridge")
def main() -> None:
    """Change-data-capture bridge: legacy databases and files -> NATS JetStream."""


@main.command()
@CONFIG_OPTION
def validate(config_path: Path) -> None:
    """Check a config file; exit 0 if valid, 2 with every error otherwise."""
    config = _load_or_exit(config_path)
    names = ", ".join(f"{a.name} ({a.type})" for a in config.adapter_configs) or "none"
    click.echo(f"{config_path}: OK; adapters: {names}")


@main.command()
@CONFIG_OPTION
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="Log as human-readable text (default) or JSON lines.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
              default=None)
def run(config_path: Path, log_format: str | None, log_level: str | None) -> None:
    """Run the bridge until SIGTERM/SIGINT."""
    # Until the daemon installs its own handlers, a stop request just ends the process:
    # nothing has been captured yet, so there is nothing to drain.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    config = _load_or_exit(config_path)
    setup_logging(log_level or config.log.level, log_format or config.log.format, config.secrets)
    from bridge.daemon import run_daemon

    try:
        code = asyncio.run(run_daemon(config))
    except ConfigError as e:
        for line in e.errors:
            click.echo(f"configuration error: {line}", err=True)
        sys.exit(2)
    except FatalError as e:
        click.echo(f"cdc-bridge: {e}", err=True)
        sys.exit(1)
    sys.exit(code)


@main.command()
@click.argument("subject", default=">")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Take the NATS URL and stream from this config.")
@click.option("-s", "--server", default=None, help="NATS URL (overrides the config).")
@click.option("--stream", default=None, help="Stream name (default: from config, or CDC).")
@click.option("--new", "only_new", is_flag=True, help="Only events that arrive from now on.")
@click.option("--raw", is_flag=True, help="Print message bodies as they are, one per line.")
@click.option("-n", "--count", type=int, default=0, help="Stop after this many events.")
@click.option("--idle-exit", type=float, default=0.0,
              help="Exit after this many seconds without a new event (0 = never).")
def tail(subject: str, config_path: Path | None, server: str | None, stream: str | None,
         only_new: bool, raw: bool, count: int, idle_exit: float) -> None:
    """Print events on SUBJECT (wildcards allowed, e.g. 'cdc.>') as they arrive."""
    from bridge.tail import TailOptions, tail_events

    config = _load_or_exit(config_path) if config_path else None
    servers = [server] if server else (config.nats.servers() if config else
                                       ["nats://127.0.0.1:4222"])
    stream_name = stream or (config.nats.stream if config else "CDC")
    opts = TailOptions(servers, stream_name, subject, only_new, raw, count, idle_exit)
    try:
        asyncio.run(tail_events(opts))
    except KeyboardInterrupt:
        pass
    except FatalError as e:
        click.echo(f"cdc-bridge tail: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
