"""No credential on a token path, and route methods: what a call may carry upstream.

A call to a token path (``/accesstoken/get``, ``/api/access-token/jwt-token``,
``/miami/v1/token``), in any spelling the router reads alike, is answered with the
placeholder or forwarded with the client's own headers only: never with ours, or the
upstream would hand the real token to the client. A method a route does not take gets
405 with ``Allow`` before any credential is touched.
"""

from __future__ import annotations

import asyncio
import string
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import ConfigError, parse_config
from tests.conftest import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_MSN,
    DEMO_SUBSCRIPTION_KEY,
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    make_config,
)

TOKEN_PATHS = ("/accesstoken/get", "/api/access-token/jwt-token", "/miami/v1/token")
OURS = (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SUBSCRIPTION_KEY, DEMO_MSN)
DEFAULT_ALLOW = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
WAIT = 30.0  # the ceiling on one answer; on an idle machine it comes at once


@dataclass
class Recorder:
    """An upstream that answers 200 to anything and keeps every request's head."""

    heads: list[str] = field(default_factory=list)
    server: RawTestServer | None = None

    async def handle(self, request: web.BaseRequest) -> web.Response:
        lines = [f"{request.method} {request.raw_path}"]
        lines += [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in request.raw_headers]
        self.heads.append("\n".join(lines))
        return web.json_response({"seen": True})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/")).rstrip("/")


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    found = Recorder()
    found.server = RawTestServer(found.handle, host="127.0.0.1")
    await found.server.start_server()
    yield found
    await found.server.close()


async def warm(proxy: RunningProxy, recorder: Recorder) -> str:
    """One ordinary call, so that a token is held; the token it carried upstream."""
    async with aiohttp.ClientSession() as client, client.get(proxy.at("/echo/warm")) as response:
        assert response.status == 200
    (authorization,) = [h for h in recorder.heads[-1].splitlines() if h.startswith("Authorization")]
    return authorization.split(" ")[-1]


async def post(proxy: RunningProxy, target: str) -> int:
    """The status of ``POST target``, the target sent as written (no client library
    normalises it first)."""
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        writer.write(
            f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(WAIT):
            answer = await reader.read()
    finally:
        writer.close()
    return int(answer.split(b" ", 2)[1])


def _spell_char(char: str) -> st.SearchStrategy[str]:
    """One character of a path in a form the router reads alike."""
    forms = {char, char.upper(), char.lower()}
    if char in string.ascii_letters + string.digits + "-._~":
        code = f"{ord(char):02X}"
        forms |= {f"%{code}", f"%{code.lower()}"}
    return st.sampled_from(sorted(forms))


@st.composite
def spelling(draw: st.DrawFn) -> str:
    """A token path in some spelling: case, escapes, dot segments, doubled slashes, a
    trailing slash, a query."""
    path = draw(st.sampled_from(TOKEN_PATHS))
    out = ""
    for segment in path.strip("/").split("/"):
        out += draw(st.sampled_from(["/", "//", "/./", "/zz/../", "/%2e/"]))
        out += "".join(draw(_spell_char(c)) for c in segment)
    out += draw(st.sampled_from(["", "/", "/.", "//"]))
    return out + draw(st.sampled_from(["", "?x=1"]))


SPELLINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(params=[True, False], ids=["local", "forwarded"])
async def token_proxy(
    request: pytest.FixtureRequest,
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    recorder: Recorder,
) -> tuple[RunningProxy, bool, str]:
    """The proxy with local_token_endpoints on or off, a token held; and that token."""
    route = {} if request.param else {"local_token_endpoints": False}
    proxy = await start_proxy(make_config(emulator.token_url, recorder.url, route=route))
    return proxy, request.param, await warm(proxy, recorder)


@SPELLINGS
@given(target=spelling())
async def test_no_spelling_of_a_token_path_carries_our_credentials_upstream(
    target: str, token_proxy: tuple[RunningProxy, bool, str], recorder: Recorder
) -> None:
    """Answered locally (the default) or forwarded (local_token_endpoints = false), no
    spelling of a token path reaches the upstream with our key, id, secret, MSN or token."""
    proxy, local, token = token_proxy
    seen_before = len(recorder.heads)
    assert await post(proxy, target) == 200
    forwarded = recorder.heads[seen_before:]
    assert len(forwarded) == (0 if local else 1)
    for head in forwarded:
        for ours in (*OURS, token):
            assert ours not in head, f"{target}: the upstream got {ours!r}"


async def test_a_token_path_under_the_upstreams_base_path_carries_no_credentials(
    emulator: RunningEmulator, start_proxy: ProxyFactory, recorder: Recorder
) -> None:
    """``/access-token/jwt-token`` sent to an upstream whose base path is ``/api`` is
    ``/api/access-token/jwt-token`` there: forwarded without our credentials."""
    proxy = await start_proxy(make_config(emulator.token_url, recorder.url + "/api"))
    token = await warm(proxy, recorder)
    assert await post(proxy, "/access-token/jwt-token") == 200
    assert recorder.heads[-1].startswith("POST /api/access-token/jwt-token")
    for ours in (*OURS, token):
        assert ours not in recorder.heads[-1]


async def test_the_oauth2_token_path_is_answered_with_the_placeholder(
    emulator: RunningEmulator, start_proxy: ProxyFactory, recorder: Recorder
) -> None:
    """``POST /miami/v1/token`` gets the placeholder, as the other two token paths do."""
    proxy = await start_proxy(make_config(emulator.token_url, recorder.url))
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.at("/miami/v1/token")) as answer,
    ):
        body = await answer.json()
    assert body["access_token"].startswith("vipps-proxy-placeholder-")
    assert recorder.heads == []


def test_client_credentials_with_local_token_endpoints_off_is_a_config_error() -> None:
    """The combination that handed the real token out is refused, naming the route."""
    doc = config_doc({"auth": "client-credentials", "local_token_endpoints": False})
    with pytest.raises(ConfigError) as refused:
        parse_config(doc, {})
    assert refused.value.key == "routes[0].local_token_endpoints"
    assert "'/'" in str(refused.value)


def config_doc(route: dict[str, Any]) -> dict[str, Any]:
    creds = {
        "token_url": "http://127.0.0.1:9/accesstoken/get",
        "client_id": "id",
        "client_secret": "secret",
        "subscription_key": "key",
    }
    routes = [{"prefix": "/", "upstream": "http://127.0.0.1:9", **route}]
    return {"credentials": {"main": creds}, "routes": routes}


# --- methods ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PROPFIND", "SEARCH", "QUERY", "MKCOL", "LINK"])
async def test_a_method_outside_the_default_gets_405_with_allow_and_nothing_goes_upstream(
    method: str, emulator: RunningEmulator, start_proxy: ProxyFactory, recorder: Recorder
) -> None:
    """405, ``Allow`` listing the default methods, the connection closed; the upstream
    sees nothing and no token is fetched for it."""
    proxy = await start_proxy(make_config(emulator.token_url, recorder.url))
    await warm(proxy, recorder)
    seen, fetched = len(recorder.heads), dict(emulator.state.token_requests)
    target = proxy.at("/epayment/v1/payments")
    async with aiohttp.ClientSession() as client, client.request(method, target) as response:
        assert response.status == 405
        assert response.headers["Allow"] == DEFAULT_ALLOW
        assert response.content_type == "application/problem+json"
    assert len(recorder.heads) == seen
    assert dict(emulator.state.token_requests) == fetched


async def test_a_routes_own_methods_are_the_only_ones_it_takes(
    emulator: RunningEmulator, start_proxy: ProxyFactory, recorder: Recorder
) -> None:
    """``methods = ["GET", "PROPFIND"]``: PROPFIND goes through, POST gets 405 with
    ``Allow: GET, PROPFIND`` and goes nowhere."""
    route = {"methods": ["GET", "PROPFIND"]}
    proxy = await start_proxy(make_config(emulator.token_url, recorder.url, route=route))
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.at("/x"), data=b"{}") as response:
            assert response.status == 405
            assert response.headers["Allow"] == "GET, PROPFIND"
        assert recorder.heads == []
        async with client.request("PROPFIND", proxy.at("/x")) as response:
            assert response.status == 200
    assert recorder.heads[-1].startswith("PROPFIND /x")


@pytest.mark.parametrize(
    ("methods", "key"),
    [
        ([], "routes[0].methods"),
        (["get"], "routes[0].methods[0]"),
        (["GET", "TRACE"], "routes[0].methods[1]"),
        (["CONNECT"], "routes[0].methods[0]"),
        (["GET POST"], "routes[0].methods[0]"),
        ("GET", "routes[0].methods"),
    ],
)
def test_methods_that_cannot_work_are_a_config_error_naming_the_key(methods: Any, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(config_doc({"methods": methods}), {})
    assert refused.value.key == key
