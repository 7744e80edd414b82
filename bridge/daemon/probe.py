"""A NATS reachability probe for readiness, independent of the relay's connection.

The relay connects when it has something to publish and drops its connection on any
failure (see :mod:`cdc_bridge.relay.publisher`), so an idle relay does not notice that NATS came
back. Readiness asks "could we publish now?": connected relay, or else a small probe
connection of our own (same servers, auth and TLS; the client's own reconnect on)
that is up. The probe connects lazily, only while the relay is not connected, and is
closed on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS

from cdc_bridge.kernel.errors import BridgeError
from cdc_bridge.relay.publisher import connect_options
from cdc_bridge.relay.settings import NatsConfig

log = logging.getLogger("cdc_bridge.probe")


class NatsProbe:
    def __init__(self, cfg: NatsConfig) -> None:
        self.cfg = cfg
        self.nc: NATS | None = None
        self._connecting: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def poke(self) -> None:
        """Start a connection attempt in the background if none is up or under way."""
        if self.nc is not None or (self._connecting and not self._connecting.done()):
            return
        self._connecting = asyncio.create_task(self._connect(), name="nats-probe")

    async def _connect(self) -> None:
        try:
            opts: dict[str, Any] = connect_options(self.cfg)
        except BridgeError:  # a bad key file: the relay reports it and stops the daemon
            return
        opts.update(name="cdc-bridge-probe", allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=1)
        with contextlib.suppress(TimeoutError, OSError, nats.errors.Error):
            self.nc = await nats.connect(**opts, error_cb=_quiet, disconnected_cb=_none,
                                         reconnected_cb=_none)

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.nc = None


async def _quiet(exc: Exception) -> None:
    log.debug("probe: %s", exc)


async def _none() -> None:
    return None
