"""The live status page: ``GET /``, its assets under ``/static/``, and ``/api/overview``.

The page is three files shipped in the package (``cdc_bridge/daemon/web/``: plain HTML,
CSS and JavaScript; no build step, no framework, nothing fetched from elsewhere). The
script polls ``api/overview`` (:mod:`cdc_bridge.daemon.overview`) about once a second
and redraws; URLs are relative, so the page also works behind a reverse proxy that
mounts the endpoint under a path.

Every answer carries a strict Content-Security-Policy (own origin only, no inline
script) and ``nosniff``; the API answer is never cached.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

#: Served file -> content type. Nothing else under ``/static/`` exists.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def load_assets() -> dict[str, bytes]:
    """The page's files from the installed package (read once, at start)."""
    web_dir = resources.files("cdc_bridge.daemon").joinpath("web")
    return {name: web_dir.joinpath(name).read_bytes() for name in ASSETS}


def add_routes(app: web.Application,
               overview: Callable[[], Awaitable[dict[str, Any]]]) -> None:
    """Register the page, its assets and the API on ``app``."""
    assets = load_assets()

    def _file(name: str, cache: str) -> web.Response:
        return web.Response(body=assets[name], headers={
            "Content-Type": ASSETS[name], "Cache-Control": cache, **SECURITY_HEADERS})

    async def page(_: web.Request) -> web.Response:
        return _file("index.html", "no-cache")

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS or name == "index.html":
            raise web.HTTPNotFound(text="no such file\n")
        return _file(name, "no-cache")

    async def api(_: web.Request) -> web.Response:
        resp = web.json_response(await overview())
        resp.headers.update({"Cache-Control": "no-store", **SECURITY_HEADERS})
        return resp

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/overview", api)
