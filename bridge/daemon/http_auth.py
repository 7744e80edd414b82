"""The token rule of the operations endpoint: who may change state over HTTP.

Reading (``GET``: the status page, health, metrics, status) is open, as for any
Prometheus target; it shows no secret. Requests that change state (every other method:
``POST /snapshot`` today, whatever comes later) follow one rule:

- ``http.token`` set: they need ``Authorization: Bearer <token>``, wherever the
  endpoint listens; missing or wrong is ``401``;
- no token, endpoint on a loopback address (``127.0.0.1``, ``::1``, ``localhost``):
  allowed, as before (whoever can reach it is on the machine already);
- no token, endpoint beyond loopback (``0.0.0.0``, a pod IP): refused with ``403`` and
  a message naming ``http.token``. The daemon starts all the same (a container exposes
  its endpoint for probes and metrics, which need no token) and says so in its log.

Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve beyond loopback


def writes_refused_reason(host: str, token: str | None) -> str | None:
    """Why state-changing requests are refused outright (``None``: they are not)."""
    if token is None and not is_loopback(host):
        return (f"state-changing requests are refused: the endpoint listens on {host}, "
                "beyond loopback, and http.token is not set")
    return None


def token_guard(host: str, token: str | None) -> Middleware:
    """An aiohttp middleware applying the rule above to every request."""
    refused = writes_refused_reason(host, token)
    expected = f"Bearer {token}".encode() if token is not None else b""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in READ_METHODS:
            return await handler(request)
        if refused is not None:
            raise web.HTTPForbidden(text=refused + "\n")
        if token is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise web.HTTPUnauthorized(
                    text="this request needs Authorization: Bearer <http.token>\n",
                    headers={"WWW-Authenticate": 'Bearer realm="cdc-bridge"'})
        return await handler(request)

    return guard
