"""TLS both ways, with certificates made in the test (trustme).

Outbound: the upstream and the token endpoint are verified by default, a private CA is
trusted only through ``[tls] ca_bundle``, ``verify = false`` is loud, and ``client_cert``
/ ``client_key`` are presented to an upstream that asks for one. Inbound: the proxy
serves HTTPS with ``server.tls_cert``/``tls_key`` and, with ``client_ca``, serves only
clients whose certificate that CA signed. Every refusal is also checked upstream: the
emulator saw no request and no token call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web
from yarl import URL

from proxy.emulator import EmulatorState, create_emulator, emulator_state
from proxy.tokens import MIN_AGE_TO_INVALIDATE
from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, make_config

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class Issued:
    """A certificate and its key as files, as a config names them."""

    cert: Path
    key: Path


def write(cert: trustme.LeafCert, directory: Path, name: str) -> Issued:
    chain = directory / f"{name}.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key = directory / f"{name}.key"
    cert.private_key_pem.write_to_path(str(key))
    return Issued(chain, key)


def ca_file(ca: trustme.CA, directory: Path, name: str) -> Path:
    path = directory / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@dataclass
class TLSEmulator:
    """The Vipps emulator behind HTTPS."""

    url: URL
    state: EmulatorState

    @property
    def token_url(self) -> URL:
        return self.url / "accesstoken/get"

    def untouched(self) -> bool:
        """No API request and no token call reached it."""
        return self.state.received_total == 0 and sum(self.state.token_requests.values()) == 0


StartTLSEmulator = Callable[..., Awaitable[TLSEmulator]]


@pytest.fixture
async def start_tls_emulator() -> AsyncIterator[StartTLSEmulator]:
    """Starts the emulator on 127.0.0.1 with a server certificate (and client CA)."""
    runners: list[web.AppRunner] = []

    async def factory(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> TLSEmulator:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        if client_ca is not None:
            client_ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        app = create_emulator()
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        return TLSEmulator(URL(f"https://127.0.0.1:{port}"), emulator_state(app))

    yield factory
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def tls_config(upstream: TLSEmulator, **tls: Any) -> Any:
    """Route /echo passes through, /epayment carries our token; both to ``upstream``."""
    return make_config(
        upstream.token_url,
        extra={
            "tls": tls,
            "routes": [
                {"prefix": "/echo", "upstream": str(upstream.url), "auth": "none"},
                {"prefix": "/epayment", "upstream": str(upstream.url)},
            ],
        },
    )


async def fetch(url: str | URL, context: ssl.SSLContext | None = None) -> tuple[int, str, bytes]:
    connector = aiohttp.TCPConnector(ssl=context) if context is not None else None
    async with (
        aiohttp.ClientSession(connector=connector) as client,
        client.get(url) as response,
    ):
        return response.status, response.content_type, await response.read()


# --------------------------------------------------------------------------- outbound


async def test_an_upstream_with_a_self_signed_certificate_is_refused_by_default(
    ca: trustme.CA, start_tls_emulator: StartTLSEmulator, start_proxy: ProxyFactory
) -> None:
    """An upstream whose CA is not trusted: 502 problem+json, and it never sees the call."""
    upstream = await start_tls_emulator(ca.issue_cert("127.0.0.1"))
    proxy = await start_proxy(tls_config(upstream))
    status, content_type, _ = await fetch(proxy.at("/echo/x"))
    assert (status, content_type) == (502, PROBLEM_JSON)
    assert upstream.untouched()


async def test_a_token_endpoint_with_a_self_signed_certificate_never_gets_credentials(
    ca: trustme.CA, start_tls_emulator: StartTLSEmulator, start_proxy: ProxyFactory
) -> None:
    """Our client secret is never sent over an unverified connection: 503, no token call."""
    upstream = await start_tls_emulator(ca.issue_cert("127.0.0.1"))
    proxy = await start_proxy(tls_config(upstream))
    status, content_type, _ = await fetch(proxy.at("/epayment/v1/payments/tls-ref-1"))
    assert (status, content_type) == (503, PROBLEM_JSON)
    assert upstream.untouched()


async def test_ca_bundle_trusts_a_private_ca_for_upstream_and_token_endpoint(
    ca: trustme.CA,
    start_tls_emulator: StartTLSEmulator,
    start_proxy: ProxyFactory,
    tmp_path: Path,
) -> None:
    """With the CA in ``[tls] ca_bundle`` the token is fetched and the call goes through."""
    upstream = await start_tls_emulator(ca.issue_cert("127.0.0.1"))
    proxy = await start_proxy(tls_config(upstream, ca_bundle=str(ca_file(ca, tmp_path, "up"))))
    assert (await fetch(proxy.at("/echo/x")))[0] == 200
    status, _, body = await fetch(proxy.at("/epayment/v1/payments/tls-ref-1"))
    assert status == 404, body  # the emulator's "no such payment", after our token passed
    assert upstream.state.token_requests["accesstoken"] >= 1
    (call,) = [r for r in upstream.state.received if r.raw_path.startswith("/epayment")]
    (authorization,) = call.values("Authorization")
    assert authorization.removeprefix("Bearer ") in upstream.state.tokens


async def test_a_certificate_for_another_name_is_refused_even_from_a_trusted_ca(
    ca: trustme.CA,
    start_tls_emulator: StartTLSEmulator,
    start_proxy: ProxyFactory,
    tmp_path: Path,
) -> None:
    """The host name is checked too: a trusted CA's certificate for another name is 502."""
    upstream = await start_tls_emulator(ca.issue_cert("api.vipps.test"))
    proxy = await start_proxy(tls_config(upstream, ca_bundle=str(ca_file(ca, tmp_path, "up"))))
    status, content_type, _ = await fetch(proxy.at("/echo/x"))
    assert (status, content_type) == (502, PROBLEM_JSON)
    assert upstream.untouched()


def verify_warnings(proxy: RunningProxy) -> int:
    """Warning lines that speak of TLS verification being off."""
    return sum(
        1
        for line in proxy.logs.lines()
        if line.get("level") == "warning" and "verify" in orjson.dumps(line).decode().lower()
    )


async def test_verify_false_warns_at_start_and_on_every_fetch(
    ca: trustme.CA, start_tls_emulator: StartTLSEmulator, start_proxy: ProxyFactory
) -> None:
    """``verify = false`` works against any certificate, and says so each time it matters."""
    upstream = await start_tls_emulator(ca.issue_cert("127.0.0.1"))
    proxy = await start_proxy(tls_config(upstream, verify=False))
    assert verify_warnings(proxy) >= 1, "no warning at start"
    assert (await fetch(proxy.at("/epayment/v1/payments/tls-ref-1")))[0] == 404
    fetches = upstream.state.token_requests["accesstoken"]
    after_first = verify_warnings(proxy)
    assert after_first >= 1 + fetches, "no warning for the first token fetch"
    await asyncio.sleep(MIN_AGE_TO_INVALIDATE)
    upstream.state.tokens.clear()  # refused token: the proxy fetches a new one
    await fetch(proxy.at("/epayment/v1/payments/tls-ref-1"))
    assert upstream.state.token_requests["accesstoken"] > fetches
    assert verify_warnings(proxy) > after_first, "no warning for the second token fetch"


async def test_an_upstream_asking_for_a_client_certificate_refuses_the_proxy_without_one(
    ca: trustme.CA,
    start_tls_emulator: StartTLSEmulator,
    start_proxy: ProxyFactory,
    tmp_path: Path,
) -> None:
    """Control for mutual TLS: no ``client_cert`` configured, the upstream refuses: 502."""
    upstream = await start_tls_emulator(ca.issue_cert("127.0.0.1"), client_ca=trustme.CA())
    proxy = await start_proxy(tls_config(upstream, ca_bundle=str(ca_file(ca, tmp_path, "up"))))
    status, content_type, _ = await fetch(proxy.at("/echo/x"))
    assert (status, content_type) == (502, PROBLEM_JSON)
    assert upstream.untouched()


async def test_client_cert_and_key_are_presented_to_the_upstream(
    ca: trustme.CA,
    start_tls_emulator: StartTLSEmulator,
    start_proxy: ProxyFactory,
    tmp_path: Path,
) -> None:
    """``[tls] client_cert``/``client_key`` signed by the upstream's client CA: served."""
    client_ca = trustme.CA()
    ours = write(client_ca.issue_cert("vipps-proxy.test"), tmp_path, "ours")
    upstream = await start_tls_emulator(ca.issue_cert("127.0.0.1"), client_ca=client_ca)
    config = tls_config(
        upstream,
        ca_bundle=str(ca_file(ca, tmp_path, "up")),
        client_cert=str(ours.cert),
        client_key=str(ours.key),
    )
    proxy = await start_proxy(config)
    assert (await fetch(proxy.at("/echo/x")))[0] == 200
    assert (await fetch(proxy.at("/epayment/v1/payments/tls-ref-1")))[0] == 404
    assert upstream.state.token_requests["accesstoken"] >= 1


# --------------------------------------------------------------------------- inbound


@dataclass
class HTTPSProxy:
    proxy: RunningProxy
    ca: trustme.CA

    def url(self, path: str) -> str:
        host, port = self.proxy.address
        return f"https://{host}:{port}{path}"

    def client_context(self, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        if cert is not None:
            cert.configure_cert(context)
        return context


StartHTTPSProxy = Callable[..., Awaitable[HTTPSProxy]]


@pytest.fixture
def start_https_proxy(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, ca: trustme.CA
) -> StartHTTPSProxy:
    """The proxy serving HTTPS with a certificate from ``ca``, optionally with client_ca."""

    async def factory(client_ca: trustme.CA | None = None) -> HTTPSProxy:
        served = write(ca.issue_cert("127.0.0.1"), tmp_path, "proxy")
        server = {"tls_cert": str(served.cert), "tls_key": str(served.key)}
        if client_ca is not None:
            server["client_ca"] = str(ca_file(client_ca, tmp_path, "clients"))
        config = make_config(emulator.token_url, emulator.url, server=server)
        return HTTPSProxy(await start_proxy(config), ca)

    return factory


async def raw_https_get(
    address: tuple[str, int], context: ssl.SSLContext | None, path: str
) -> bytes:
    """A GET over TLS (or plain when ``context`` is None); b"" if refused or closed."""
    request = f"GET {path} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n".encode()
    try:
        reader, writer = await asyncio.open_connection(*address, ssl=context)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def test_the_proxy_serves_https_with_tls_cert_and_key(
    start_https_proxy: StartHTTPSProxy, emulator: RunningEmulator
) -> None:
    """``server.tls_cert``/``tls_key``: a client trusting the CA is served over HTTPS."""
    https = await start_https_proxy()
    status, _, _ = await fetch(https.url("/echo/over-tls"), https.client_context())
    assert status == 200
    assert [r.raw_path for r in emulator.state.received] == ["/echo/over-tls"]


async def test_plain_http_to_the_tls_listener_is_not_served(
    start_https_proxy: StartHTTPSProxy, emulator: RunningEmulator
) -> None:
    """Cleartext HTTP sent to the HTTPS port gets no answer and reaches nothing."""
    https = await start_https_proxy()
    answer = await raw_https_get(https.proxy.address, None, "/echo/plain")
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]
    assert emulator.state.received_total == 0


async def test_a_client_without_a_certificate_is_refused_when_client_ca_is_set(
    start_https_proxy: StartHTTPSProxy, emulator: RunningEmulator
) -> None:
    """``client_ca``: a TLS client presenting no certificate gets no answer."""
    https = await start_https_proxy(client_ca=trustme.CA())
    answer = await raw_https_get(https.proxy.address, https.client_context(), "/echo/anon")
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]
    assert emulator.state.received_total == 0


async def test_a_client_certificate_from_another_ca_is_refused(
    start_https_proxy: StartHTTPSProxy, emulator: RunningEmulator
) -> None:
    """``client_ca``: a certificate signed by some other CA gets no answer."""
    https = await start_https_proxy(client_ca=trustme.CA())
    stranger = trustme.CA().issue_cert("client.test")
    context = https.client_context(stranger)
    answer = await raw_https_get(https.proxy.address, context, "/echo/stranger")
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:200]
    assert emulator.state.received_total == 0


async def test_a_client_certificate_from_client_ca_is_served(
    start_https_proxy: StartHTTPSProxy, emulator: RunningEmulator
) -> None:
    """``client_ca``: a client whose certificate that CA signed is served."""
    client_ca = trustme.CA()
    https = await start_https_proxy(client_ca=client_ca)
    context = https.client_context(client_ca.issue_cert("client.test"))
    status, _, _ = await fetch(https.url("/echo/known"), context)
    assert status == 200
    assert [r.raw_path for r in emulator.state.received] == ["/echo/known"]


async def test_a_client_silent_in_the_tls_handshake_is_closed_after_header_timeout(
    emulator: RunningEmulator, start_proxy: ProxyFactory, tmp_path: Path, ca: trustme.CA
) -> None:
    """A connection that never sends its ClientHello is not yet counted by
    max_connections (the client's connection begins after the handshake), so the
    handshake itself is bounded by header_timeout, not asyncio's default 60 s."""
    served = write(ca.issue_cert("127.0.0.1"), tmp_path, "proxy")
    server = {"tls_cert": str(served.cert), "tls_key": str(served.key), "header_timeout": 0.2}
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url, server=server))
    reader, writer = await asyncio.open_connection(*proxy.address)
    try:
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the proxy, nothing sent
    finally:
        writer.close()
