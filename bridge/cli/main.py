"""The ``cdc-bridge`` command line (click).

Exit codes: 0 success; 1 runtime failure (a fatal error while running); 2 invalid
configuration or usage, with every problem printed on its own line with its path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import click

from cdc_bridge import __version__
from cdc_bridge.cli.common import load_or_exit
from cdc_bridge.config import BridgeConfig
from cdc_bridge.daemon.logs import RedactingFilter, setup_logging
from cdc_bridge.kernel.errors import BridgeError, ConfigError, FatalError

CONFIG_OPTION = click.option(
    "-c", "--config", "config_path", required=True,
    type=click.Path(dir_okay=False, path_type=Path), help="YAML config file.",
)


def _err(config: BridgeConfig | None, message: str) -> None:
    """Print an error to stderr with every secret of the config (and URL passwords) masked."""
    click.echo(RedactingFilter(config.secrets if config else ()).redact(message), err=True)


_load_or_exit = load_or_exit


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
    os.umask(0o077)  # the daemon's files (outbox, control file, NATS store): this user only
    from cdc_bridge.daemon.daemon import run_daemon

    try:
        code = asyncio.run(run_daemon(config))
    except ConfigError as e:
        for line in e.errors:
            _err(config, f"configuration error: {line}")
        sys.exit(2)
    except FatalError as e:
        _err(config, f"cdc-bridge: {e}")
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
@click.option("--headers", "show_headers", is_flag=True, help="Show message headers too.")
@click.option("--wait", "wait", is_flag=True,
              help="Wait for NATS to come up instead of failing after connect_timeout.")
def tail(subject: str, config_path: Path | None, server: str | None, stream: str | None,
         only_new: bool, raw: bool, count: int, idle_exit: float, show_headers: bool,
         wait: bool) -> None:
    """Print events on SUBJECT (wildcards allowed, e.g. 'cdc.>') as they arrive.

    From the start of the stream by default, or only new events with --new.
    """
    from cdc_bridge.cli.tail import TailOptions, tail_events
    from cdc_bridge.relay.publisher import connect_options

    config = _load_or_exit(config_path) if config_path else None
    connect = {k: v for k, v in connect_options(config.nats).items()
               if k not in ("servers", "name", "pending_size")} if config else {}
    servers = [server] if server else (config.nats.servers() if config else
                                       ["nats://127.0.0.1:4222"])
    stream_name = stream or (config.nats.stream if config else "CDC")
    wait_s = None if wait else (config.nats.connect_timeout if config else 5.0)
    opts = TailOptions(servers, stream_name, subject, only_new, raw, count, idle_exit,
                       show_headers, sys.stdout.isatty(), connect, wait_s)
    try:
        asyncio.run(tail_events(opts))
    except KeyboardInterrupt:
        pass
    except FatalError as e:
        _err(config, f"cdc-bridge tail: {e}")
        sys.exit(1)


@main.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path, as_json: bool) -> None:
    """Per adapter: state, checkpoint, lag, pending events; and the daemon's health."""
    from cdc_bridge.cli.status import gather, render

    config = _load_or_exit(config_path)
    try:
        data = gather(config)
    except Exception as e:
        _err(config, f"cdc-bridge status: {type(e).__name__}: {e}")
        sys.exit(1)
    redact = RedactingFilter(config.secrets).redact
    click.echo(redact(json.dumps(data, indent=2, default=str) if as_json else render(data)))


@main.command()
@CONFIG_OPTION
def init(config_path: Path) -> None:
    """Create the outbox, the stream, and each adapter's slots/publications; say what was done."""
    from cdc_bridge.cli.init import run_init

    config = _load_or_exit(config_path)
    setup_logging("WARNING", config.log.format, config.secrets)
    logging.getLogger("nats.aio.client").setLevel(logging.CRITICAL)  # said once, below
    redact = RedactingFilter(config.secrets).redact
    try:
        ok = asyncio.run(run_init(config, lambda line: click.echo(redact(line))))
    except FatalError as e:
        _err(config, f"cdc-bridge init: {e}")
        sys.exit(1)
    sys.exit(0 if ok else 1)


@main.command()
@CONFIG_OPTION
@click.argument("adapter")
@click.argument("tables", nargs=-1)
@click.option("--no-wait", is_flag=True, help="Queue the request and return at once.")
@click.option("--timeout", type=float, default=0.0, help="Give up waiting after N seconds.")
@click.option("--where", "where", default=None, metavar="EXPR",
              help="Only the rows matching EXPR (the row-filter language; a partial "
                   "backfill).")
def snapshot(config_path: Path, adapter: str, tables: tuple[str, ...], no_wait: bool,
             timeout: float, where: str | None) -> None:
    """Re-snapshot ADAPTER (all its tables, or TABLE...) in the running daemon."""
    from cdc_bridge.cli.snapshot import request_snapshot

    config = _load_or_exit(config_path)
    code = request_snapshot(config, adapter, list(tables) or None, wait=not no_wait,
                            timeout_s=timeout, echo=click.echo, where=where)
    sys.exit(code)


@main.command()
@CONFIG_OPTION
@click.option("--to", "target", required=True,
              help="Target subject prefix: cdc.a.b.c.op is republished as TO.a.b.c.op.")
@click.option("--filter", "filter_subject", default=None,
              help="Only subjects matching this (default: the whole prefix).")
@click.option("--from-seq", type=int, default=None, help="First stream sequence.")
@click.option("--to-seq", type=int, default=None, help="Last stream sequence.")
@click.option("--since", default=None, help="ISO 8601 time, or a duration back (2h).")
@click.option("--until", default=None, help="ISO 8601 time, or a duration back.")
@click.option("--run-id", default=None,
              help="Makes message ids unique per run (replay again into the same target).")
@click.option("--target-stream", default=None,
              help="Stream to create for the target when none captures it.")
def replay(config_path: Path, target: str, filter_subject: str | None, from_seq: int | None,
           to_seq: int | None, since: str | None, until: str | None, run_id: str | None,
           target_stream: str | None) -> None:
    """Republish events from the stream, for a sequence or time range, under another prefix."""
    from cdc_bridge.cli.replay import ReplayOptions, parse_when
    from cdc_bridge.cli.replay import replay as do_replay

    config = _load_or_exit(config_path)
    try:
        opts = ReplayOptions(target, filter_subject, from_seq, to_seq,
                             parse_when(since) if since else None,
                             parse_when(until) if until else None, run_id, target_stream)
    except ValueError as e:
        _err(config, f"cdc-bridge replay: {e}")
        sys.exit(2)
    with click.progressbar(length=1, label="replaying", file=sys.stderr) as bar:
        def progress(done: int, total: int) -> None:
            bar.length = max(total, done, 1)
            bar.update(done - bar.pos)

        try:
            result = asyncio.run(do_replay(config, opts, progress))
        except ConfigError as e:
            for line in e.errors:
                _err(config, f"cdc-bridge replay: {line}")
            sys.exit(2)
        except BridgeError as e:  # fatal or not: the replay stops
            _err(config, f"cdc-bridge replay: {e}")
            sys.exit(1)
    span = (f"stream sequences {result.first_seq}..{result.last_seq}"
            if result.first_seq else "no events in range")
    click.echo(f"replayed {result.published} events ({span}) to {target}.> "
               f"in stream {result.target_stream}; {result.duplicates} already there "
               "(not stored again)")

from cdc_bridge.cli.outbox import outbox_command; main.add_command(outbox_command)  # noqa: E402, E702, I001
from cdc_bridge.cli.reset import reset_command; main.add_command(reset_command)  # noqa: E402, E702, I001
from cdc_bridge.cli.dlq import dlq_command; main.add_command(dlq_command)  # noqa: E402, E702, I001
from cdc_bridge.cli.trace import trace_command; main.add_command(trace_command)  # noqa: E402, E702, I001
from cdc_bridge.cli.schema import schema_command; main.add_command(schema_command)  # noqa: E402, E702, I001


if __name__ == "__main__":
    main()
