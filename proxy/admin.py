"""What the proxy answers itself: health, readiness, metrics, and legacy token calls.

``/-/health``, ``/-/ready`` and ``/-/metrics`` are answered on the API port, or with
``[server] admin_port`` set, only on a listener of their own (``serve_admin``; the API
port then answers 404 for ``/-/``). On the API port ``/-/metrics`` needs a client key
like any call when ``client_keys`` are set; health and readiness stay open for probes.

Legacy apps (and the official plugins and SDKs) still ask ``POST /accesstoken/get`` or
``POST /api/access-token/jwt-token`` (or ``POST /miami/v1/token``) for a token before
their calls (in any spelling the upstream reads as one of these; other methods there get
405). The proxy answers
with all seven fields as strings and a *placeholder* ``access_token``: the real token
never leaves the proxy, and the placeholder is worthless anywhere else (the proxy
strips every client ``Authorization`` header and injects the real token).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Final

import orjson
from aiohttp import web

from proxy.access import check_client_key
from proxy.calls import request_id
from proxy.config import Route, ServerConfig
from proxy.errors import NotFound, ProxyError, problem_response
from proxy.headers import REQUEST_ID
from proxy.routing import fold_case
from proxy.startup import StartupError, listen
from proxy.state import ProxyState

HEALTH: Final = "/-/health"
READY: Final = "/-/ready"
METRICS: Final = "/-/metrics"
ADMIN_PREFIX: Final = "/-/"
#: Every token endpoint of Vipps': accesstoken, jwt-token (0.1.1) and oauth2.
LEGACY_TOKEN_PATHS: Final = frozenset(
    {"/accesstoken/get", "/api/access-token/jwt-token", "/miami/v1/token"}
)
#: A normal form has at most one trailing slash.
_LEGACY_LENGTHS: Final = frozenset(len(p) + s for p in LEGACY_TOKEN_PATHS for s in (0, 1))
PLACEHOLDER_LIFETIME: Final = 3600
AAD_RESOURCE: Final = "00000002-0000-0000-c000-000000000000"


def is_legacy_token_path(normal_path: str) -> bool:
    """A legacy token path in any spelling the upstream reads as one: ``normal_path`` is
    normalised (encodings, doubled slashes, dot segments), and case and a trailing
    slash do not count. Other lengths, nearly every call, are ruled out first."""
    return (
        len(normal_path) in _LEGACY_LENGTHS
        and fold_case(normal_path).rstrip("/") in LEGACY_TOKEN_PATHS
    )


def api_admin_response(state: ProxyState, request: web.BaseRequest, path: str) -> web.Response:
    """The answer on the API port for a reserved ``/-/`` path."""
    server = state.config.server
    if server.admin_port:
        raise NotFound(f"{ADMIN_PREFIX} paths are served on the admin listener only")
    if path == METRICS:
        check_client_key(server.client_keys, request)
    return admin_response(state, path)


async def serve_admin(
    state: Callable[[], ProxyState], server: ServerConfig, *, reuse_port: bool = False
) -> web.ServerRunner:
    """Listen on ``admin_host:admin_port`` for health, readiness and metrics only;
    ``state()`` is the snapshot serving now. A port that cannot be listened on raises
    `StartupError` naming ``server.admin_port``, with nothing left open."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        call_id = request_id(request.headers)
        try:
            response = admin_response(state(), request.raw_path.partition("?")[0])
        except ProxyError as error:  # an unknown path: the same problem as on the API port
            response = problem_response(error, call_id)
        response.headers[REQUEST_ID] = call_id
        return response

    runner = web.ServerRunner(
        web.Server(handle, keepalive_timeout=server.header_timeout), shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, server.admin_host, server.admin_port, reuse_port=reuse_port or None)
    try:
        await listen(
            site, "server.admin_port", server.admin_host, server.admin_port, "server.admin_host"
        )
    except StartupError:
        await runner.cleanup()
        raise
    return runner


def reaches_token_path(route: Route, normal_path: str) -> bool:
    """True if the upstream would read ``normal_path``, sent on ``route``, as a token
    path: such a call must never carry the credentials the proxy injects."""
    return is_legacy_token_path(route.upstream_base + normal_path)


def admin_response(state: ProxyState, path: str) -> web.Response:
    """The answer for a reserved ``/-/`` path."""
    if path == HEALTH:
        return web.json_response({"status": "ok"})
    if path == READY:
        return _ready(state)
    if path == METRICS:
        return web.Response(body=state.metrics.render(), content_type="text/plain", charset="utf-8")
    raise NotFound(
        f"no reserved path {path}: {HEALTH}, {READY} and {METRICS} are", reason="no_route"
    )


def _ready(state: ProxyState) -> web.Response:
    # Only sets that need a token have a cache (a client-credentials route's has none).
    failing = sorted(name for name, tokens in state.tokens.items() if not tokens.can_serve())
    store_down = state.webhooks is not None and not state.webhooks.can_commit
    if failing or store_down:
        body: dict[str, object] = {"status": "not ready", "credentials_without_token": failing}
        if store_down:
            body["webhook_store"] = "cannot commit"
        return web.Response(
            status=503,
            body=orjson.dumps(body),
            content_type="application/json",
            headers={"Retry-After": "5"},
        )
    return web.json_response({"status": "ready"})


def legacy_token_response(state: ProxyState) -> web.Response:
    """A seven-field token response whose access_token is the proxy's placeholder."""
    now = math.floor(time.time())
    life = str(PLACEHOLDER_LIFETIME)
    body = {
        "token_type": "Bearer",
        "expires_in": life,
        "ext_expires_in": life,
        "expires_on": str(now + PLACEHOLDER_LIFETIME),
        "not_before": str(now),
        "resource": AAD_RESOURCE,
        "access_token": state.placeholder,
    }
    return web.Response(body=orjson.dumps(body), content_type="application/json")
