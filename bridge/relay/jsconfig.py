"""The JetStream settings every store of the bridge shares with its stream (pure).

The stream, the dead-letter stream, the claim-check bucket and the schema registry all
take the stream's storage and placement from ``nats:``: one translation of those two
settings into nats-py's API types, here.
"""

from __future__ import annotations

from nats.js import api

from cdc_bridge.relay.settings import NatsConfig


def storage_type(cfg: NatsConfig) -> api.StorageType:
    return api.StorageType.FILE if cfg.storage == "file" else api.StorageType.MEMORY


def placement(cfg: NatsConfig) -> api.Placement | None:
    """``nats.placement`` (cluster, server tags), or ``None`` when not set."""
    if not cfg.placement:
        return None
    return api.Placement(cluster=cfg.placement.cluster, tags=list(cfg.placement.tags) or None)
