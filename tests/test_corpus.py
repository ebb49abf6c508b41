"""Vipps' documented answers, each served byte for byte through the proxy.

``tests/corpus/sources.toml`` lists every answer, its source and version, and the
outcome Vipps' documentation gives it. The upstreams and token endpoints here are raw
asyncio socket servers on 127.0.0.1 that write exactly the corpus bytes; the proxy in
front of them is the real one.
"""

from __future__ import annotations

import asyncio
import re
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from proxy.tokens import MIN_AGE_TO_INVALIDATE
from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, free_port, make_config
from tests.loopback import LoopbackServers
from tests.raw_token_endpoint import RawTokenEndpoint, http_answer, start_token_endpoint
from tests.test_webhooks_relay import start_app, start_relay
from tests.webhook_peers import ECOM, eventually, stored

CORPUS = Path(__file__).parent / "corpus"
ANSWERS: list[dict[str, Any]] = tomllib.loads((CORPUS / "sources.toml").read_text())["answer"]
#: How the documents cut a token short: a space and a marker, which no header can carry.
ELIDED = re.compile(rb'"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1Ni <(?:continued|truncated)>"')
#: A whole token of the same shape, for the one place the documents left out.
WHOLE_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJjb3JwdXMiOnRydWV9.c2lnbmF0dXJl"


def answers(*outcomes: str) -> list[Any]:
    return [
        pytest.param(entry, id=entry["file"]) for entry in ANSWERS if entry["outcome"] in outcomes
    ]


def corpus_bytes(entry: dict[str, Any]) -> bytes:
    path: str = entry["file"]
    return (CORPUS / path).read_bytes()


def test_every_corpus_file_names_its_source_and_version() -> None:
    """Each file in tests/corpus is listed once, with a source, a version and an outcome."""
    files = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file())
    listed = sorted(entry["file"] for entry in ANSWERS)
    assert listed == sorted(f for f in files if f != "sources.toml")
    assert all(entry["source"] and entry["version"] and entry["outcome"] for entry in ANSWERS)


# ------------------------------------------------------------------ a raw upstream


@dataclass
class RawUpstream:
    """Answers request n with ``answers[n]`` (the last one again after that), exactly
    those bytes, on keep-alive connections; keeps each request's head."""

    answers: list[bytes]
    heads: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> URL:
        assert self.server is not None
        return URL(f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                writer.write(self.answers[min(len(self.heads), len(self.answers)) - 1])
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def raw_answer(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


OK = raw_answer(200, b"ok", "text/plain")


@pytest.fixture
def raw_upstream(
    loopback_servers: LoopbackServers,
) -> Callable[[list[bytes]], Awaitable[RawUpstream]]:
    async def factory(answers: list[bytes]) -> RawUpstream:
        upstream = RawUpstream(answers)
        upstream.server = await loopback_servers.start(upstream.serve)
        return upstream

    return factory


async def call(proxy: RunningProxy, path: str = "/x") -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as client, client.get(proxy.at(path)) as response:
        return response.status, dict(response.headers), await response.read()


def authorization(head: bytes) -> bytes:
    found = re.search(rb"(?im)^authorization:[ \t]*(.*?)\r$", head)
    assert found is not None, head
    return found.group(1)


# ------------------------------------------------------------------ token answers


async def token_proxy(
    entry: dict[str, Any], body: bytes, upstream: RawUpstream, start_proxy: ProxyFactory
) -> tuple[RunningProxy, RawTokenEndpoint]:
    endpoint = await start_token_endpoint(http_answer(body))
    style = {"token_style": entry["token_style"]} if "token_style" in entry else {}
    proxy = await start_proxy(make_config(endpoint.url, upstream.url, credentials=style))
    return proxy, endpoint


@pytest.mark.parametrize("entry", answers("token-kept"))
async def test_a_documented_token_answer_gives_a_working_kept_token(
    entry: dict[str, Any], raw_upstream: Any, start_proxy: ProxyFactory
) -> None:
    """The document's bytes, less only the elided token (made whole): the token is sent
    on every call, fetched once, and held for the answer's expires_in."""
    body, count = ELIDED.subn(f'"{WHOLE_TOKEN}"'.encode(), corpus_bytes(entry))
    assert count == 1
    upstream = await raw_upstream([OK])
    proxy, endpoint = await token_proxy(entry, body, upstream, start_proxy)
    try:
        results = [await call(proxy) for _ in range(3)]
    finally:
        assert endpoint.server is not None
        endpoint.server.close()

    assert [status for status, _, _ in results] == [200, 200, 200]
    assert [authorization(h) for h in upstream.heads] == [f"Bearer {WHOLE_TOKEN}".encode()] * 3
    assert endpoint.requests == 1
    (fetched,) = proxy.logs.events("token_fetched")
    lifetime = float(orjson.loads(body)["expires_in"])
    assert fetched["valid_for_s"] == round(lifetime - min(5.0, lifetime * 0.1))


@pytest.mark.parametrize("entry", answers("token-kept"))
async def test_a_token_answer_as_printed_is_a_failed_fetch_never_a_500(
    entry: dict[str, Any], raw_upstream: Any, start_proxy: ProxyFactory
) -> None:
    """Printed, the token is cut short with a space and a marker, which no header can
    carry: a failed fetch (503 with Retry-After), and nothing reaches the upstream."""
    upstream = await raw_upstream([OK])
    proxy, endpoint = await token_proxy(entry, corpus_bytes(entry), upstream, start_proxy)
    try:
        status, headers, _ = await call(proxy)
    finally:
        assert endpoint.server is not None
        endpoint.server.close()

    assert status == 503
    assert int(headers["Retry-After"]) >= 1
    assert upstream.heads == []
    assert all("visible ASCII" in e["error"] for e in proxy.logs.events("token_refresh_failed"))


# ------------------------------------------------------------------ 401 and 403


@pytest.mark.parametrize(
    "entry", answers("token-refusal", "key-refusal", "other-refusal")
)  # fmt: skip
async def test_a_documented_refusal_is_classified_as_its_documentation_says(
    entry: dict[str, Any],
    raw_upstream: Any,
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
) -> None:
    """A token refusal gets one fresh token and one replay; a key refusal, and any
    other, goes back byte for byte with no fetch and the token kept."""
    body, status = corpus_bytes(entry), entry["status"]
    content_type = "text/plain" if entry["file"].endswith(".txt") else "application/json"
    upstream = await raw_upstream([OK, raw_answer(status, body, content_type), OK])
    proxy = await start_proxy(make_config(emulator.token_url, upstream.url))
    assert (await call(proxy))[0] == 200
    await asyncio.sleep(MIN_AGE_TO_INVALIDATE)  # old enough to be dropped, if it should be

    got_status, headers, got = await call(proxy)

    line = proxy.logs.events("request_completed")[-1]
    fetches = emulator.state.token_requests["accesstoken"]
    if entry["outcome"] == "token-refusal":
        assert (got_status, got, line["replayed"]) == (200, b"ok", "true")
        assert fetches == 2
        assert authorization(upstream.heads[2]) != authorization(upstream.heads[1])
        return
    assert (got_status, got, headers["Content-Type"]) == (status, body, content_type)
    assert "replayed" not in line
    assert fetches == 1
    assert len(upstream.heads) == 2
    if entry["outcome"] == "key-refusal":
        assert line["error"] == "upstream_rejected_subscription_key"
    elif status == 401:
        assert line["error"] == "upstream_unauthorized"


# ------------------------------------------------------------------ API errors


@pytest.mark.parametrize("entry", answers("relayed"))
async def test_a_documented_api_error_is_relayed_byte_for_byte(
    entry: dict[str, Any],
    raw_upstream: Any,
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
) -> None:
    """Status, content type and body exactly as the API sent them."""
    body = corpus_bytes(entry)
    upstream = await raw_upstream([raw_answer(entry["status"], body, entry["content_type"])])
    proxy = await start_proxy(make_config(emulator.token_url, upstream.url))

    status, headers, got = await call(proxy)

    assert (status, headers["Content-Type"], got) == (entry["status"], entry["content_type"], body)
    assert emulator.state.token_requests["accesstoken"] == 1


# ------------------------------------------------------------------ webhooks, callbacks


@pytest.mark.parametrize("entry", answers("webhook-delivered", "callback-delivered"))
async def test_a_documented_event_is_accepted_and_delivered(
    entry: dict[str, Any],
    emulator: RunningEmulator,
    start_proxy: ProxyFactory,
    tmp_path: Path,
    aiohttp_server: Any,
) -> None:
    """A webhook signed as Vipps signs it, or an eCom callback to
    [callbackPrefix]/v2/payments/{orderId}: 200 at once, then delivered as sent."""
    port = free_port()
    callback = entry["outcome"] == "callback-delivered"
    hooks = [{"path": ECOM, "kind": "ecom-callback", "deliver_to": f"http://127.0.0.1:{port}/cb"}]
    relay = await start_relay(
        emulator, start_proxy, tmp_path, port, hooks=hooks if callback else None
    )
    await start_app(aiohttp_server, relay.app, port)
    body = corpus_bytes(entry)

    if callback:
        status = await post(relay.proxy, ECOM + "/v2/payments/acme-shop-123-order123abc", body)
    else:
        status = (await relay.send(body))[0]

    assert status == 200
    await eventually(lambda: stored(relay.store, "delivered") != [], "delivery")
    assert relay.app.bodies() == [body]


async def post(proxy: RunningProxy, path: str, body: bytes) -> int:
    """An unsigned POST, as Vipps sends an eCom callback."""
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as client,
        client.post(proxy.at(path), data=body, headers=headers) as response,
    ):
        return response.status
