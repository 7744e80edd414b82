"""``cdc-bridge init``: create everything the bridge needs, and say what was done.

Steps, each reporting one line per action (and safe to run again: existing things are
reported as such, not recreated):

1. the state directory and the control file;
2. the outbox store (tables are created when the store opens);
3. the JetStream stream (created, updated to match the config, or already fine) and its
   dead-letter stream ``<STREAM>_DLQ`` (``<prefix>_dlq.>``) and, with claim checks on,
   the object store bucket of large events (``<STREAM>_CLAIMS``); with the embedded default,
   the embedded nats-server is started for the duration;
4. every adapter's source-side set-up, for adapter types that implement
   :class:`cdc_bridge.adapters.contract.SupportsInit` (replication slots, publications, ...); other
   types say they need none.

An adapter whose set-up fails is reported and the others still run; the command exits
non-zero if anything failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import nats
import nats.errors
import nats.js.errors

from cdc_bridge.adapters.contract import SupportsInit
from cdc_bridge.adapters.registry import AdapterContext, create
from cdc_bridge.config import BridgeConfig
from cdc_bridge.daemon.control import ControlDb, control_path
from cdc_bridge.daemon.embedded import EmbeddedNats
from cdc_bridge.daemon.instance import running_daemon
from cdc_bridge.kernel.errors import BridgeError
from cdc_bridge.kernel.events import dead_letter_stream
from cdc_bridge.outbox.factory import open_store
from cdc_bridge.relay.claims import stream_of
from cdc_bridge.relay.publisher import Publisher, connect_once

Say = Callable[[str], None]


async def run_init(config: BridgeConfig, say: Say) -> bool:
    """Do every step; returns ``True`` if all succeeded."""
    ok = True
    config.state_dir.mkdir(parents=True, exist_ok=True)
    ControlDb(control_path(config.state_dir))
    say(f"state: {config.state_dir} ready (control file {control_path(config.state_dir).name})")

    try:
        store = open_store(config.outbox_url())
        try:
            say(f"outbox: {config.outbox_url().split(':', 1)[0]} store ready "
                f"(id {store.store_id}, {store.stats().pending} pending)")
        finally:
            store.close()
    except BridgeError as e:  # one line with the cause, and the other steps still run
        say(f"outbox: FAILED: {e}")
        ok = False

    embedded = None
    try:
        daemon = running_daemon(config.state_dir)
        if config.nats.url is None and daemon is not None:
            say(f"nats: using the running daemon's embedded nats-server ({daemon.describe()})")
        elif config.nats.url is None:
            listen = config.nats.embedded
            embedded = EmbeddedNats(listen.host, listen.port, config.state_dir / "nats")
            await embedded.start()
            say(f"nats: started the embedded nats-server on {embedded.url} for set-up")
        await _init_stream_checked(config, say)
    except BridgeError as e:
        say(f"stream: FAILED: {e}")
        ok = False
    finally:
        if embedded is not None:
            await embedded.stop()

    context = AdapterContext(state_dir=config.state_dir,
                             subject_prefix=config.nats.subject_prefix)
    for cfg in config.adapter_configs:
        adapter = create(cfg, context)
        try:
            if not isinstance(adapter, SupportsInit):
                say(f"adapter {cfg.name}: nothing to set up for type {cfg.type}")
                continue
            for line in await adapter.init():
                say(f"adapter {cfg.name}: {line}")
        except BridgeError as e:
            say(f"adapter {cfg.name}: FAILED: {e}")
            ok = False
        finally:
            with contextlib.suppress(Exception):
                await adapter.close()
    return ok


async def _init_stream_checked(config: BridgeConfig, say: Say) -> None:
    """Create or update the stream; report whether it was created, updated or fine."""
    nc = await connect_once(config.nats)
    try:
        js = nc.jetstream()
        before = dlq_before = claims_before = None
        claims = stream_of(config.nats.claims_bucket())
        with contextlib.suppress(nats.js.errors.NotFoundError):
            before = (await js.stream_info(config.nats.stream)).config
        with contextlib.suppress(nats.js.errors.NotFoundError):
            dlq_before = (await js.stream_info(dead_letter_stream(config.nats.stream))).config
        with contextlib.suppress(nats.js.errors.NotFoundError):
            claims_before = (await js.stream_info(claims)).config
    finally:
        await nc.close()
    publisher = Publisher(config.nats)
    try:
        await publisher.connect()  # creates the stream, or updates it to match the config
        assert publisher.js is not None
        info = await publisher.js.stream_info(config.nats.stream)
        dlq = await publisher.js.stream_info(dead_letter_stream(config.nats.stream))
        bucket = (await publisher.js.stream_info(claims)
                  if config.nats.claim_checks.enabled else None)
    finally:
        await publisher.close()
    if before is None:
        verb = "created"
    elif before == info.config:
        verb = "already up to date"
    else:
        verb = "updated to match the config"
    say(f"stream: {config.nats.stream} {verb}: subjects {', '.join(info.config.subjects or [])}"
        f", duplicate window {info.config.duplicate_window or 0:.0f}s, "
        f"replicas {info.config.num_replicas}, {info.state.messages} messages")
    if info.cluster is not None:  # a JetStream cluster: who leads, which replicas are current
        peers = info.cluster.replicas or []
        current = 1 + sum(1 for p in peers if p.current and not p.offline)
        placed = info.config.placement
        where = ""
        if placed is not None:
            tags = f" tags {','.join(placed.tags)}" if placed.tags else ""
            where = f", placement {placed.cluster or ''}{tags}"
        say(f"stream: {config.nats.stream} on cluster {info.cluster.name}, leader "
            f"{info.cluster.leader}, {current} of {1 + len(peers)} replicas current{where}")
    dlq_verb = ("created" if dlq_before is None else "already up to date"
                if dlq_before == dlq.config else "updated")
    say(f"dead-letter stream: {dlq.config.name} {dlq_verb}: subjects "
        f"{', '.join(dlq.config.subjects or [])}, {dlq.state.messages} dead letters "
        "(cdc-bridge dlq list)")
    if bucket is not None:
        kept = f"{bucket.config.max_age:g}s" if bucket.config.max_age else "for ever"
        claims_verb = ("created" if claims_before is None else "already up to date"
                       if claims_before == bucket.config else "updated")
        say(f"claim-check bucket: {config.nats.claims_bucket()} {claims_verb}: objects kept "
            f"{kept}, {bucket.state.messages} messages (large events' bodies)")
