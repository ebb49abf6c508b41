"""Forwarding: what the upstream receives and what the client gets back, byte for byte."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDict
from yarl import URL

from tests.conftest import (
    DEMO_MSN,
    DEMO_SUBSCRIPTION_KEY,
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    make_config,
)


def header_values(echoed: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echoed["headers"] if k.lower() == name.lower()]


async def echo(
    proxy: RunningProxy, path: str, method: str = "GET", **kwargs: Any
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as client:
        url = URL(proxy.at(path), encoded=True)
        async with client.request(method, url, **kwargs) as response:
            assert response.status == 200, await response.text()
            result: dict[str, Any] = await response.json()
            return result


async def raw_exchange(proxy: RunningProxy, request: bytes) -> bytes:
    """Send raw bytes to the proxy and read its answer."""
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(1 << 20), 10)
    writer.close()
    return data


async def test_our_credentials_replace_the_clients(
    proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """Client credentials are removed; our token, key and MSN are injected."""
    echoed = await echo(
        proxy,
        "/echo/creds",
        headers={
            "Authorization": "Bearer client-junk",
            "Ocp-Apim-Subscription-Key": "undefined",
            "client_id": "app-id",
            "client_secret": "app-secret",
        },
    )
    (auth,) = header_values(echoed, "Authorization")
    assert auth.startswith("Bearer ")
    assert auth.removeprefix("Bearer ") in emulator.state.tokens
    assert header_values(echoed, "Ocp-Apim-Subscription-Key") == [DEMO_SUBSCRIPTION_KEY]
    assert header_values(echoed, "Merchant-Serial-Number") == [DEMO_MSN]
    assert header_values(echoed, "client_id") == []
    assert header_values(echoed, "client_secret") == []


async def test_raw_path_and_query_arrive_unchanged(proxy: RunningProxy) -> None:
    """Encoded slashes, plus signs, UTF-8, empty and bare query values pass byte for byte."""
    raw = "/echo/a%2Fb/%C3%A6%20x/~%7E?x=1+2&y=&z=%2F&w&q=%C3%B8%3D"
    echoed = await echo(proxy, raw)
    assert echoed["raw_path"] == raw


async def test_connection_named_and_hop_by_hop_headers_are_dropped(proxy: RunningProxy) -> None:
    """Headers listed in Connection and the RFC 9110 hop-by-hop ones never go upstream."""
    request = (
        b"GET /echo/hop HTTP/1.1\r\nHost: example.invalid\r\n"
        b"Connection: keep-alive, X-Hop-Secret\r\nX-Hop-Secret: 1\r\nKeep-Alive: timeout=5\r\n"
        b"TE: trailers\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = await raw_exchange(proxy, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    names = {name.lower() for name, _ in orjson.loads(body)["headers"]}
    assert "x-kept" in names
    assert names.isdisjoint({"x-hop-secret", "keep-alive", "te", "proxy-connection", "connection"})


async def test_host_is_the_upstreams(proxy: RunningProxy, emulator: RunningEmulator) -> None:
    """The client's Host never reaches the upstream; the upstream's own does."""
    echoed = await echo(proxy, "/echo/host", headers={"Host": "evil.example"})
    assert header_values(echoed, "Host") == [f"127.0.0.1:{emulator.url.port}"]


async def test_repeated_request_headers_keep_their_order(proxy: RunningProxy) -> None:
    """A header sent twice arrives twice, in the order sent, among the others."""
    headers = [("X-Multi", "first"), ("X-Other", "o"), ("X-Multi", "second")]
    echoed = await echo(proxy, "/echo/multi", headers=CIMultiDict(headers))
    assert header_values(echoed, "X-Multi") == ["first", "second"]


async def test_repeated_response_headers_reach_the_client(proxy: RunningProxy) -> None:
    """Set-Cookie and other repeated upstream headers come back, all of them, in order."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.at("/download/10")) as response,
    ):
        assert response.status == 200
        cookies = [v for k, v in response.raw_headers if k.lower() == b"set-cookie"]
        multi = response.headers.getall("X-Echo-Multi")
    assert len(cookies) == 2
    assert len(multi) == 2


async def test_a_streamed_body_goes_chunked_whatever_length_the_client_gave(
    proxy: RunningProxy,
) -> None:
    """A body too large to hold is streamed, so framed chunked by the proxy: the client's
    Content-Length is never the upstream's framing (issue 11)."""
    body = b"x" * 200_000

    async def gen() -> Any:
        for i in range(0, len(body), 50_000):
            yield body[i : i + 50_000]

    echoed = await echo(
        proxy, "/echo/upload", "POST", data=gen(), headers={"Content-Length": str(len(body))}
    )
    assert header_values(echoed, "Content-Length") == []
    assert header_values(echoed, "Transfer-Encoding") == ["chunked"]
    assert echoed["body_length"] == len(body)


async def test_chunked_body_stays_chunked(proxy: RunningProxy) -> None:
    """A chunked request body reaches the upstream chunked, complete."""

    async def gen() -> Any:
        for _ in range(4):
            yield b"y" * 30_000

    echoed = await echo(proxy, "/echo/chunked", "PUT", data=gen())
    assert header_values(echoed, "Transfer-Encoding") == ["chunked"]
    assert header_values(echoed, "Content-Length") == []
    assert echoed["body_length"] == 120_000


async def test_head_carries_no_body(proxy: RunningProxy) -> None:
    """HEAD through the proxy: the upstream's length header, and no body bytes."""
    request = b"HEAD /echo/head HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await raw_exchange(proxy, request)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    assert length is not None
    assert int(length.group(1)) > 0  # the upstream's length, not an empty body's 0
    assert body == b""


async def test_204_and_304_carry_no_body(proxy: RunningProxy) -> None:
    """204 and 304 answers pass with their status and no body, not even chunk framing."""
    for code in (204, 304):
        request = f"GET /status/{code} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await raw_exchange(proxy, request.encode())
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {code}".encode())
        assert b"Transfer-Encoding" not in head
        assert body == b""


async def test_expect_100_continue_is_answered_by_the_proxy(proxy: RunningProxy) -> None:
    """The proxy answers 100 Continue itself and does not forward Expect upstream."""
    reader, writer = await asyncio.open_connection(*proxy.address)
    writer.write(
        b"POST /echo/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    names = {name.lower() for name, _ in orjson.loads(body)["headers"]}
    assert "expect" not in names


async def test_expect_on_a_call_refused_early_gets_the_refusal_not_100(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """A call without the client key is refused at once: no 100 Continue invites its body."""
    config = make_config(emulator.token_url, emulator.url, server={"client_keys": ["k" * 32]})
    proxy = await start_proxy(config)
    answer = await raw_exchange(
        proxy,
        b"POST /echo/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 407"), answer[:60]
    assert b"100 Continue" not in answer


async def test_unknown_expectation_gets_a_417_problem(proxy: RunningProxy) -> None:
    """An Expect other than 100-continue is refused with a 417 problem, nothing forwarded."""
    answer = await raw_exchange(
        proxy,
        b"POST /echo/expect HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 200-ok\r\nConnection: close\r\n\r\nhello",
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 417"), head
    assert b"application/problem+json" in head
    assert orjson.loads(body)["status"] == 417


async def test_request_id_is_generated_and_not_sent_upstream(proxy: RunningProxy) -> None:
    """Without a client X-Request-Id the client gets a new one; the upstream gets none."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.at("/echo/rid")) as response,
    ):
        echoed = await response.json()
        assert len(response.headers["X-Request-Id"]) >= 16
    assert header_values(echoed, "X-Request-Id") == []


async def test_client_request_id_is_kept_both_ways(proxy: RunningProxy) -> None:
    """A client X-Request-Id is returned, logged and forwarded unchanged."""
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.at("/echo/rid"), headers={"X-Request-Id": "abc-123"}) as response,
    ):
        echoed = await response.json()
        assert response.headers["X-Request-Id"] == "abc-123"
    assert header_values(echoed, "X-Request-Id") == ["abc-123"]
    (line,) = [e for e in proxy.logs.events("request_completed") if e["path"] == "/echo/rid"]
    assert line["request_id"] == "abc-123"


async def test_connection_is_closed_after_a_refused_connect(proxy: RunningProxy) -> None:
    """After a 405 for CONNECT nothing more is read from that connection."""
    answer = await raw_exchange(
        proxy,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n"
        b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 405")
    assert answer.count(b"HTTP/1.1") == 1


async def test_a_pass_through_route_that_names_credentials_strips_and_injects_nothing(
    emulator: RunningEmulator, start_proxy: ProxyFactory
) -> None:
    """``auth = "none"`` means the client's own credentials: naming a credential set on
    such a route neither removes the client's Authorization, key or serial number nor
    adds ours (hop-by-hop fields still go)."""
    config = make_config(
        emulator.token_url, emulator.url, route={"auth": "none", "credentials": "main"}
    )
    proxy = await start_proxy(config)
    own = {
        "Authorization": "Bearer users-own",
        "Ocp-Apim-Subscription-Key": "apps-own-key",
        "Merchant-Serial-Number": "999999",
        "client_id": "app-id",
        "client_secret": "app-secret",
    }
    echoed = await echo(proxy, "/echo/none", headers={**own, "Keep-Alive": "timeout=5"})
    for name, value in own.items():
        assert header_values(echoed, name) == [value]
    assert header_values(echoed, "Keep-Alive") == []
