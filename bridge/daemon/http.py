"""The operations HTTP endpoint (aiohttp): health, readiness, Prometheus metrics, status.

Routes:

- ``GET /``: the live status page (:mod:`cdc_bridge.daemon.statuspage`), fed by
  ``GET /api/overview`` (:mod:`cdc_bridge.daemon.overview`).
- ``GET /healthz``: 200 while the event loop answers (liveness: restart me if not).
- ``GET /readyz``: 200 when the daemon is connected to NATS and every adapter is
  capturing, 503 otherwise; the JSON body says which part is not ready and why.
- ``GET /metrics``: :data:`cdc_bridge.metrics.REGISTRY` in the Prometheus text format
  (prometheus-client's own exposition).
- ``GET /status``: the daemon's live state as JSON (what ``cdc-bridge status`` shows).
- ``POST /snapshot`` ``{"adapter": "...", "tables": [...], "where": "..."}``: queue a
  re-snapshot in the control channel (:mod:`cdc_bridge.daemon.control`) and return its
  request id; ``GET /requests/{id}`` reports its progress. ``where`` (optional) makes it
  a partial backfill; one that does not parse is a ``400`` with its position and a caret.

- ``POST /schema/accept`` ``{"adapter": "...", "table": "..."}``: resume a table paused
  by a breaking schema change (docs/schemas.md); queued like a snapshot (``202`` with
  its id; ``GET /requests/{id}`` says when the held events were released).

Requests that change state (``POST /snapshot``, ``POST /schema/accept``) follow the token rule of
:mod:`cdc_bridge.daemon.http_auth`: with ``http.token`` set they need it as a bearer
token; without one they are only accepted on a loopback address.

The server only reads state through :class:`StateSource`; it owns no daemon logic.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cdc_bridge.adapters.snapshot_where import check_where
from cdc_bridge.daemon.control import ControlDb
from cdc_bridge.daemon.http_auth import token_guard, writes_refused_reason
from cdc_bridge.daemon.statuspage import add_routes
from cdc_bridge.kernel.errors import ConfigError
from cdc_bridge.metrics import REGISTRY

log = logging.getLogger("cdc_bridge.http")


class StateSource(Protocol):
    def live_state(self) -> dict[str, Any]: ...

    def readiness(self) -> tuple[bool, dict[str, Any]]: ...


Overview = Callable[[], Awaitable[dict[str, Any]]]


def make_app(source: StateSource, control: ControlDb | None = None, *,
             overview: Overview | None = None, host: str = "127.0.0.1",
             token: str | None = None) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        ready, detail = source.readiness()
        return web.json_response({"ready": ready, **detail}, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(_: web.Request) -> web.Response:
        return web.json_response(source.live_state())

    async def snapshot(request: web.Request) -> web.Response:
        if control is None:
            raise web.HTTPNotFound(text="no control channel")
        adapter, tables, where = _snapshot_body(await request.read())
        rid = await asyncio.to_thread(control.submit, "snapshot", adapter, tables, where)
        return web.json_response({"id": rid}, status=202)

    async def request_status(request: web.Request) -> web.Response:
        if control is None:
            raise web.HTTPNotFound(text="no control channel")
        try:
            rid = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPBadRequest(text="request id must be an integer") from None
        req = await asyncio.to_thread(control.get, rid)
        if req is None:
            raise web.HTTPNotFound(text=f"no request {rid}")
        return web.json_response({"id": req.id, "kind": req.kind, "adapter": req.adapter,
                                  "tables": req.tables, "where": req.where,
                                  "status": req.status,
                                  "events": req.events, "message": req.message})

    app = web.Application(middlewares=[token_guard(host, token)])
    if overview is not None:
        add_routes(app, overview)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    app.router.add_post("/snapshot", snapshot)
    app.router.add_post("/schema/accept", _schema_accept(control))
    app.router.add_get("/requests/{id}", request_status)
    return app


def _schema_accept(control: ControlDb | None
                   ) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def schema_accept(request: web.Request) -> web.Response:
        if control is None:
            raise web.HTTPNotFound(text="no control channel")
        try:
            body = json.loads(await request.read())
            adapter, table = str(body["adapter"]), str(body["table"])
        except (ValueError, KeyError, TypeError) as e:
            raise web.HTTPBadRequest(text=f"expected {{adapter, table}}: {e}") from None
        rid = await asyncio.to_thread(control.submit, "schema_accept", adapter, [table], None)
        return web.json_response({"id": rid}, status=202)

    return schema_accept


def _snapshot_body(raw: bytes) -> tuple[str, list[str] | None, str | None]:
    try:
        body = json.loads(raw)
        adapter = str(body["adapter"])
        tables = body.get("tables") or None
        if tables is not None and not all(isinstance(t, str) for t in tables):
            raise ValueError("tables must be a list of strings")
        where = body.get("where")
        if where is not None and not isinstance(where, str):
            raise ValueError("where must be a string")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise web.HTTPBadRequest(text=f"expected {{adapter, tables?, where?}}: {e}") from None
    if where is not None:
        try:
            check_where(where)
        except ValueError as e:  # the message ends with the text and a caret under the spot
            raise web.HTTPBadRequest(text=f"where: {e}\n") from None
    return adapter, tables, where


class HttpServer:
    """Start/stop the endpoint on ``host:port`` inside the daemon's event loop."""

    def __init__(self, source: StateSource, host: str, port: int,
                 control: ControlDb | None = None, *, overview: Overview | None = None,
                 token: str | None = None) -> None:
        self.host = host
        self.port = port
        self.token = token
        self._runner = web.AppRunner(make_app(source, control, overview=overview, host=host,
                                              token=token), access_log=None)

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise ConfigError([f"http: cannot listen on {self.host}:{self.port}: "
                               f"{e.strerror or e}"]) from e
        addrs = self._runner.addresses
        if addrs and self.port == 0:
            self.port = int(addrs[0][1])
        log.info("HTTP endpoint on http://%s:%d (status page /, /healthz /readyz /metrics "
                 "/status)", self.host, self.port)
        refused = writes_refused_reason(self.host, self.token)
        if refused is not None:
            log.info("HTTP endpoint: %s (set it to allow POST /snapshot)", refused)

    async def stop(self) -> None:
        await self._runner.cleanup()
