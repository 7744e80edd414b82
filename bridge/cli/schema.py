"""``cdc-bridge schema list|show|diff|accept``: the schema registry from the command line.

``list``, ``show`` and ``diff`` read the registry bucket on NATS (every version of every
table, docs/schemas.md) and, where the outbox can be opened, whether a table is paused
and how many of its events are held. ``accept`` releases a paused table: it queues a
``schema_accept`` request in the control channel for the running daemon and waits for
its answer; with no daemon running it releases the held events in the outbox itself
(the next start publishes them). Exit codes: 0 done, 1 not found or failed, 2 usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import click
import nats.errors
import nats.js.errors
import orjson

from cdc_bridge.cli.common import load_or_exit
from cdc_bridge.cli.schema_logic import (
    TableVersions,
    diff_report,
    find_table,
    group_entries,
    list_rows,
    render_diff,
    render_list,
    render_show,
)
from cdc_bridge.config import BridgeConfig
from cdc_bridge.daemon.control import DONE, FINISHED, ControlDb, control_path
from cdc_bridge.kernel.errors import BridgeError
from cdc_bridge.outbox.factory import open_store
from cdc_bridge.relay.publisher import connect_once

CONFIG = click.option("-c", "--config", "config_path", required=True,
                      type=click.Path(dir_okay=False, path_type=Path),
                      help="YAML config file.")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


async def read_registry(config: BridgeConfig) -> list[dict[str, Any]]:
    """Every version document in the registry bucket (not the ``latest`` copies)."""
    nc = await connect_once(config.nats)
    try:
        js = nc.jetstream()
        try:
            kv = await js.key_value(config.nats.schemas_bucket())
        except nats.js.errors.BucketNotFoundError:
            return []
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        out = []
        for key in keys:
            if key.endswith(".latest"):
                continue
            entry = await kv.get(key)
            if entry.value:
                out.append(orjson.loads(entry.value))
        return out
    finally:
        await nc.close()


def _outbox_state(config: BridgeConfig, tables: dict[tuple[str, str], TableVersions]) -> None:
    """Add what the outbox says (paused, held) to ``tables``; silent if it cannot open."""
    url = config.outbox_url()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return  # never create an outbox here
    with contextlib.suppress(Exception):
        store = open_store(url)
        try:
            held = store.held_counts()
            for adapter, st in store.schema_states():
                tv = tables.get((adapter, st.table))
                if tv is not None:
                    tv.paused, tv.held = st.paused, held.get((adapter, st.table), 0)
        finally:
            store.close()


def _load(config_path: Path) -> tuple[BridgeConfig, dict[tuple[str, str], TableVersions]]:
    config = load_or_exit(config_path)
    try:
        entries = asyncio.run(read_registry(config))
    except (BridgeError, TimeoutError, OSError, nats.errors.Error) as e:
        raise click.ClickException(f"cannot read the schema registry: {e}") from e
    tables = group_entries(entries)
    _outbox_state(config, tables)
    return config, tables


def _table(tables: dict[tuple[str, str], TableVersions], adapter: str, table: str
           ) -> TableVersions:
    tv = find_table(tables, adapter, table)
    if tv is None:
        known = ", ".join(sorted(r for a, r in tables if a == adapter)) or "none"
        click.echo(f"cdc-bridge schema: adapter {adapter!r} has no registered table "
                   f"{table!r} (tables: {known})", err=True)
        raise SystemExit(1)
    return tv


def _known_version(tv: TableVersions, version: int) -> None:
    if version not in tv.entries:
        raise click.UsageError(f"{tv.adapter} {tv.ref} has versions "
                               f"{', '.join(map(str, sorted(tv.entries)))}, not {version}")


@click.group("schema")
def schema_command() -> None:
    """The schema registry: versions of every captured table (docs/schemas.md)."""


@schema_command.command("list")
@CONFIG
@click.option("--adapter", "-a", default=None, help="Only this adapter's tables.")
@AS_JSON
def list_(config_path: Path, adapter: str | None, as_json: bool) -> None:
    """Every captured table: its latest version, and whether it is paused."""
    _, tables = _load(config_path)
    rows = [r for r in list_rows(tables.values()) if adapter is None or r["adapter"] == adapter]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo("\n".join(render_list(rows)))


@schema_command.command("show")
@CONFIG
@click.argument("adapter")
@click.argument("table")
@click.option("--version", "-v", "version", type=int, default=None,
              help="This version (default: the latest).")
@AS_JSON
def show(config_path: Path, adapter: str, table: str, version: int | None,
         as_json: bool) -> None:
    """One version of a table: columns, types, key (--json: the whole registry entry)."""
    _, tables = _load(config_path)
    tv = _table(tables, adapter, table)
    v = tv.latest if version is None else version
    _known_version(tv, v)
    if as_json:
        click.echo(json.dumps({**tv.entries[v], "paused": tv.paused, "held": tv.held},
                              indent=2))
    else:
        click.echo("\n".join(render_show(tv, v)))


@schema_command.command("diff")
@CONFIG
@click.argument("adapter")
@click.argument("table")
@click.argument("versions", nargs=-1, type=int)
@AS_JSON
def diff_(config_path: Path, adapter: str, table: str, versions: tuple[int, ...],
          as_json: bool) -> None:
    """What changed between two versions (default: the latest and the one before)."""
    _, tables = _load(config_path)
    tv = _table(tables, adapter, table)
    if len(versions) > 2:
        raise click.UsageError("give at most two versions: FROM [TO]")
    new = versions[1] if len(versions) == 2 else tv.latest
    old = versions[0] if versions else new - 1
    for v in (old, new):
        _known_version(tv, v)
    report = diff_report(tv, old, new)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo("\n".join(render_diff(report)))


@schema_command.command("accept")
@CONFIG
@click.argument("adapter")
@click.argument("table")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the running daemon's answer.")
def accept(config_path: Path, adapter: str, table: str, timeout_s: float) -> None:
    """Resume a table paused by a breaking schema change: its held events are published."""
    from cdc_bridge.cli.status import read_live

    config = load_or_exit(config_path)
    if adapter not in {a.name for a in config.adapter_configs}:
        names = ", ".join(a.name for a in config.adapter_configs) or "none"
        raise click.UsageError(f"no adapter named {adapter!r} (adapters: {names})")
    live, _ = read_live(config)
    if live is None:
        raise SystemExit(_accept_offline(config, adapter, table))
    control = ControlDb(control_path(config.state_dir))
    rid = control.submit("schema_accept", adapter, [table], None)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        req = control.get(rid)
        if req is not None and req.status in FINISHED:
            click.echo(req.message or req.status, err=req.status != DONE)
            raise SystemExit(0 if req.status == DONE else 1)
        time.sleep(0.1)
    click.echo(f"schema accept request {rid}: no answer from the daemon after "
               f"{timeout_s:.0f}s; it stays queued", err=True)
    raise SystemExit(1)


def _accept_offline(config: BridgeConfig, adapter: str, table: str) -> int:
    """No daemon running: release the held events in the outbox directly."""
    from cdc_bridge.daemon.schemas import resolve_table  # (the daemon's modules: only here)

    store = open_store(config.outbox_url())
    try:
        states = {st.table: st for _, st in store.schema_states(adapter)}
        name = resolve_table(sorted(states), table)
        if name is None:
            click.echo(f"cdc-bridge schema: adapter {adapter} has no captured table "
                       f"{table!r} (tables: {', '.join(sorted(states)) or 'none yet'})",
                       err=True)
            return 1
        if states[name].paused is None:
            click.echo(f"{adapter} {name}: not paused (schema v{states[name].version})")
            return 0
        moved = store.release(adapter, name)
    finally:
        store.close()
    click.echo(f"{adapter} {name}: schema v{states[name].version} accepted, {moved} held "
               "events released (the daemon is not running: they are published when it "
               "starts)")
    return 0
