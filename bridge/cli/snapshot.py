"""Client side of ``cdc-bridge snapshot``: queue a request, follow it with a progress bar.

The request goes into the control file (:mod:`cdc_bridge.daemon.control`) that the running daemon
polls; the daemon side is :mod:`cdc_bridge.daemon.snapshots`. Before queueing, the command checks
what it can locally so mistakes fail fast with exit code 2: the adapter exists, and
its type implements :class:`cdc_bridge.adapters.contract.SupportsSnapshot` ("not supported by this
adapter type" otherwise), and with ``--where`` (a partial backfill) that the expression
parses (else the error with its position and a caret) and the type implements
:class:`~cdc_bridge.adapters.contract.SupportsPartialSnapshot`. The bar is indeterminate
(a moving block and the count of rows read so far), followed by ``rows/total`` when the
adapter reports an estimated total.

Exit codes: 0 done (or queued with ``--no-wait``), 1 failed or timed out, 2 bad request.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable

import click

from cdc_bridge.adapters.contract import SupportsPartialSnapshot, SupportsSnapshot
from cdc_bridge.adapters.registry import AdapterContext, create
from cdc_bridge.adapters.snapshot_where import check_where
from cdc_bridge.cli.status import read_live
from cdc_bridge.config import BridgeConfig
from cdc_bridge.daemon.control import DONE, FINISHED, ControlDb, control_path

Echo = Callable[..., None]


def progress_line(rows: int, elapsed_s: float, width: int = 24) -> str:
    """An indeterminate bar: a block bouncing along ``width`` cells, and the count."""
    span = max(1, width - 4)
    step = int(elapsed_s * 8) % (2 * span)
    pos = step if step < span else 2 * span - step
    bar = " " * pos + "####" + " " * (width - 4 - pos)
    return f"[{bar}] {rows} rows read, {elapsed_s:.0f}s"


def supports_snapshot(config: BridgeConfig, adapter: str, *, partial: bool = False
                      ) -> bool | None:
    """``None`` if there is no such adapter; else whether its type can re-snapshot
    (``partial``: re-snapshot the rows matching a ``where``)."""
    cfg = next((a for a in config.adapter_configs if a.name == adapter), None)
    if cfg is None:
        return None
    context = AdapterContext(state_dir=config.state_dir,
                             subject_prefix=config.nats.subject_prefix)
    instance = create(cfg, context)
    try:
        if partial:
            return isinstance(instance, SupportsSnapshot) and \
                isinstance(instance, SupportsPartialSnapshot)
        return isinstance(instance, SupportsSnapshot)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(instance.close())


def request_snapshot(config: BridgeConfig, adapter: str, tables: list[str] | None, *,
                     wait: bool = True, timeout_s: float = 0.0, echo: Echo = click.echo,
                     interval_s: float = 0.2, where: str | None = None) -> int:
    if where is not None:
        try:
            check_where(where)
        except ValueError as e:  # its message ends with the text and a caret under the spot
            echo(f"cdc-bridge snapshot: --where: {e}", err=True)
            return 2
    supported = supports_snapshot(config, adapter, partial=where is not None)
    if supported is None:
        names = ", ".join(a.name for a in config.adapter_configs) or "none"
        echo(f"cdc-bridge snapshot: no adapter named {adapter!r} (adapters: {names})", err=True)
        return 2
    if not supported:
        kind = next(a.type for a in config.adapter_configs if a.name == adapter)
        what = "snapshot" if where is None else "a partial snapshot (--where)"
        echo(f"cdc-bridge snapshot: {what} is not supported by this adapter type ({kind})",
             err=True)
        return 2
    control = ControlDb(control_path(config.state_dir))
    rid = control.submit("snapshot", adapter, tables, where)
    what = f"{adapter} {', '.join(tables) if tables else '(all tables)'}"
    if where is not None:
        what += f" where {where}"
    live, _ = read_live(config)
    if live is None:
        echo(f"snapshot request {rid} for {what} queued; the daemon is not running, it will "
             "run when the daemon starts")
        return 0
    if not wait:
        echo(f"snapshot request {rid} for {what} queued")
        return 0
    return _follow(control, rid, what, timeout_s, echo, interval_s)


def _follow(control: ControlDb, rid: int, what: str, timeout_s: float, echo: Echo,
            interval_s: float) -> int:
    started = time.monotonic()
    tty = sys.stderr.isatty()
    last_rows = -1
    while True:
        req = control.get(rid)
        assert req is not None
        elapsed = time.monotonic() - started
        if req.status in FINISHED:
            if tty:
                echo("", err=True)
            if req.status == DONE:
                echo(f"snapshot of {what}: done, {req.events} rows read in {elapsed:.1f}s")
                return 0
            echo(f"snapshot of {what}: failed: {req.message}", err=True)
            return 1
        detail = f" ({req.message})" if req.message else ""  # e.g. "1200/5000 rows"
        if tty:
            echo("\r" + progress_line(req.events, elapsed) + detail, nl=False, err=True)
        elif req.events != last_rows:
            echo(f"snapshot of {what}: {req.status}, {req.events} rows read{detail}", err=True)
            last_rows = req.events
        if timeout_s and elapsed > timeout_s:
            echo(f"snapshot of {what}: still {req.status} after {timeout_s:.0f}s; "
                 f"request {rid} keeps running in the daemon", err=True)
            return 1
        time.sleep(interval_s)
