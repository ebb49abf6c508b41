"""Reloading without a restart: rotated secrets, renewed certificates, bad files refused.

The proxy runs in front of ``RotatingVipps``, a token endpoint that accepts an old and a
new client secret, records which one each fetch used, and an API that says which token
(so which secret) a call carried. Files change on disk as an operator, Kubernetes or
cert-manager would change them; the proxy finds them by ``reload_interval`` (short
here) or SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import FrozenInstanceError, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import ConfigError, load_config
from proxy.reload import as_running
from proxy.runner import ProxyRunner
from tests.conftest import ProxyFactory, RunningEmulator, RunningProxy, free_port
from tests.processes import ProxyProcess
from tests.webhook_peers import eventually

INTERVAL = 0.2  # reload_interval in these tests, seconds
OLD_SECRET = "old-client-secret-0001"
NEW_SECRET = "new-client-secret-0002"
STEADY_SECRET = "steady-client-secret-03"
SUBSCRIPTION_KEY = "reload-subscription-key"
ROTATED_ID = "rotated-client-id-01"
STEADY_ID = "steady-client-id-02"


@dataclass
class RotatingVipps:
    """A token endpoint that knows several secrets per client id, and an API that names
    the secret behind the token each call carried."""

    accepted: dict[str, set[str]]
    fetches: list[tuple[str, str]] = field(default_factory=list)  # (client_id, secret)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> secret
    server: TestServer | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/accesstoken/get", self.token)
        app.router.add_get("/{tail:.*}", self.api)
        return app

    async def token(self, request: web.Request) -> web.Response:
        client_id = request.headers.get("client_id", "")
        secret = request.headers.get("client_secret", "")
        if secret not in self.accepted.get(client_id, set()):
            return web.json_response({"error": "invalid_client"}, status=401)
        self.fetches.append((client_id, secret))
        token = f"token-{len(self.fetches)}-for-{client_id}"
        self.tokens[token] = secret
        life = "3600"
        return web.json_response(
            {"token_type": "Bearer", "expires_in": life, "access_token": token}
        )

    async def api(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return web.json_response({"error": "invalid token"}, status=401)
        return web.json_response({"path": request.raw_path, "secret": self.tokens[token]})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def fetched_with(self, secret: str) -> int:
        return sum(1 for _, used in self.fetches if used == secret)

    def fetches_by(self, client_id: str) -> int:
        return sum(1 for who, _ in self.fetches if who == client_id)


@pytest.fixture
async def vipps(aiohttp_server: Any) -> RotatingVipps:
    upstream = RotatingVipps({ROTATED_ID: {OLD_SECRET, NEW_SECRET}, STEADY_ID: {STEADY_SECRET}})
    upstream.server = await aiohttp_server(upstream.app(), host="127.0.0.1")
    return upstream


def config_text(
    vipps: RotatingVipps, secret: str, *, server: str = "", rotated_path: str = "/v1"
) -> str:
    """Two credential sets: ``rotated`` reads its secret from ``secret`` (a file),
    ``steady`` is inline; route /a uses the first, /b the second."""
    return f"""
[server]
host = "127.0.0.1"
port = 0
shutdown_timeout = 2
reload_interval = {INTERVAL}
{server}

[credentials.rotated]
token_url = "{vipps.url}/accesstoken/get"
client_id = "{ROTATED_ID}"
client_secret_file = "{secret}"
subscription_key = "{SUBSCRIPTION_KEY}"

[credentials.steady]
token_url = "{vipps.url}/accesstoken/get"
client_id = "{STEADY_ID}"
client_secret = "{STEADY_SECRET}"
subscription_key = "{SUBSCRIPTION_KEY}"

[[routes]]
prefix = "/a"
upstream = "{vipps.url}{rotated_path}"
credentials = "rotated"

[[routes]]
prefix = "/b"
upstream = "{vipps.url}/v1"
credentials = "steady"
"""


@dataclass
class Rotation:
    proxy: RunningProxy
    vipps: RotatingVipps
    config: Path
    secret: Path

    async def call(self, client: aiohttp.ClientSession, path: str) -> tuple[int, dict[str, Any]]:
        async with client.get(self.proxy.at(path)) as response:
            body = await response.read()
            return response.status, orjson.loads(body) if response.status == 200 else {}

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.proxy.logs.events(name)

    def reloads(self, result: str) -> float:
        """``vipps_proxy_config_reloads_total{result}`` as a scrape would show it."""
        runner = self.proxy.runner
        assert isinstance(runner, ProxyRunner)
        registry = runner.proxy.state.metrics.registry
        return (
            registry.get_sample_value("vipps_proxy_config_reloads_total", {"result": result}) or 0
        )


@pytest.fixture
async def rotation(vipps: RotatingVipps, start_proxy: ProxyFactory, tmp_path: Path) -> Rotation:
    secret = tmp_path / "client_secret"
    secret.write_text(OLD_SECRET + "\n")
    path = tmp_path / "proxy.toml"
    path.write_text(config_text(vipps, str(secret)))
    proxy = await start_proxy(load_config(path))
    running = Rotation(proxy, vipps, path, secret)
    async with aiohttp.ClientSession() as client:
        assert (await running.call(client, "/a/warm"))[0] == 200
        assert (await running.call(client, "/b/warm"))[0] == 200
    return running


async def calls_in_a_loop(
    rotation: Rotation, statuses: list[int], stop: asyncio.Event, path: str
) -> None:
    async with aiohttp.ClientSession() as client:
        while not stop.is_set():
            statuses.append((await rotation.call(client, path))[0])


@contextlib.asynccontextmanager
async def load(rotation: Rotation, workers: int = 4) -> AsyncIterator[list[int]]:
    """Calls to both routes, ``workers`` at a time, until the block ends."""
    statuses: list[int] = []
    stop = asyncio.Event()
    paths = ["/a/pay", "/b/pay"] * (workers // 2)
    tasks = [asyncio.create_task(calls_in_a_loop(rotation, statuses, stop, p)) for p in paths]
    try:
        await eventually(lambda: len(statuses) > 20, "calls under way")
        yield statuses
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def no_secret_in(rotation: Rotation) -> None:
    text = rotation.proxy.logs.text()
    for secret in (OLD_SECRET, NEW_SECRET, STEADY_SECRET, SUBSCRIPTION_KEY, "wrong-secret-000004"):
        assert secret not in text


async def test_a_rotated_secret_file_is_used_by_the_next_fetch_without_a_failed_call(
    rotation: Rotation,
) -> None:
    """Under load, the secret file is rewritten: within reload_interval + 2 s the next
    fetch uses the new secret, every call succeeds, and the unchanged set fetches nothing."""
    vipps = rotation.vipps
    steady_fetches = vipps.fetches_by(STEADY_ID)
    async with load(rotation) as statuses:
        rotation.secret.write_text(NEW_SECRET + "\n")
        await eventually(lambda: vipps.fetched_with(NEW_SECRET) == 1, "a fetch", INTERVAL + 2)
        seen = len(statuses)
        await eventually(lambda: len(statuses) > seen + 20, "calls after the swap")
    assert set(statuses) == {200}
    assert vipps.fetches_by(STEADY_ID) == steady_fetches
    async with aiohttp.ClientSession() as client:
        assert (await rotation.call(client, "/a/after"))[1]["secret"] == NEW_SECRET
    (reloaded,) = rotation.events("config_reloaded")
    assert (reloaded["credentials"], reloaded["routes"]) == (["rotated"], [])
    no_secret_in(rotation)


async def test_a_reload_swaps_in_a_new_frozen_snapshot_and_leaves_the_old_one_whole(
    rotation: Rotation,
) -> None:
    """A reload builds a new snapshot, its forwarder on its own token caches, and swaps
    it in; the old one, still read by calls under way, is left as it was; neither can
    be changed."""
    runner = rotation.proxy.runner
    assert isinstance(runner, ProxyRunner)
    old = runner.proxy.state
    old_tokens = dict(old.tokens)
    rotation.secret.write_text(NEW_SECRET + "\n")
    assert await runner.reloader.reload("signal")
    new = runner.proxy.state
    assert new is not old
    assert dict(old.tokens) == old_tokens
    assert new.tokens["steady"] is old.tokens["steady"]  # equal settings: the cache stays
    assert new.tokens["rotated"] is not old.tokens["rotated"]
    assert (new.forwarder.tokens, old.forwarder.tokens) == (new.tokens, old.tokens)
    for snapshot in (old, new):
        with pytest.raises(FrozenInstanceError):
            setattr(snapshot, "tokens", {})  # noqa: B010 - the assignment mypy would refuse


async def test_a_wrong_new_secret_is_refused_and_calls_go_on_with_the_old_token(
    rotation: Rotation,
) -> None:
    """The token endpoint refuses the new secret: the reload is refused as a whole (the
    route changed with it stays as it was), the old token keeps serving, and /-/ready
    stays 200."""
    moved = config_text(rotation.vipps, str(rotation.secret), rotated_path="/v2")
    rotation.config.write_text(moved)
    rotation.secret.write_text("wrong-secret-000004\n")
    await eventually(lambda: rotation.events("config_reload_failed") != [], "a refusal")
    (failed,) = rotation.events("config_reload_failed")
    assert failed["error"].startswith("credentials.rotated:")
    assert rotation.events("config_reloaded") == []
    async with aiohttp.ClientSession() as client:
        status, answer = await rotation.call(client, "/a/after")
        assert (status, answer) == (200, {"path": "/v1/a/after", "secret": OLD_SECRET})
        async with client.get(rotation.proxy.at("/-/ready")) as response:
            assert response.status == 200
        async with client.get(rotation.proxy.at("/-/metrics")) as response:
            metrics = await response.text()
    assert 'vipps_proxy_config_reloads_total{result="error"} 1.0' in metrics
    no_secret_in(rotation)


async def test_a_bad_toml_is_refused_then_the_fixed_file_applies(rotation: Rotation) -> None:
    """A broken config file is refused (the old one serves on); once fixed, it applies."""
    good = rotation.config.read_text()
    rotation.config.write_text(good.replace("[[routes]]", "[[routes]", 1))
    await eventually(lambda: rotation.events("config_reload_failed") != [], "a refusal")
    assert "invalid TOML" in rotation.events("config_reload_failed")[0]["error"]
    async with aiohttp.ClientSession() as client:
        assert (await rotation.call(client, "/a/still"))[1]["path"] == "/v1/a/still"
        fixed = config_text(rotation.vipps, str(rotation.secret), rotated_path="/v2")
        rotation.config.write_text(fixed)
        await eventually(lambda: rotation.events("config_reloaded") != [], "a reload")
        assert (await rotation.call(client, "/a/now"))[1]["path"] == "/v2/a/now"
        async with client.get(rotation.proxy.at("/-/metrics")) as response:
            metrics = await response.text()
    (reloaded,) = rotation.events("config_reloaded")
    assert (reloaded["routes"], reloaded["credentials"]) == (["/a"], [])
    assert 'vipps_proxy_config_reloads_total{result="ok"} 1.0' in metrics
    assert "vipps_proxy_config_last_reload_success_timestamp_seconds" in metrics


async def test_a_key_that_needs_a_restart_is_named_and_the_rest_applies(
    rotation: Rotation,
) -> None:
    """A new port cannot apply to a running listener: ``reload_needs_restart`` names it,
    and the route changed with it applies."""
    port = f"port = {free_port()}"
    moved = config_text(rotation.vipps, str(rotation.secret), rotated_path="/v2")
    rotation.config.write_text(moved.replace("port = 0", port))
    await eventually(lambda: rotation.events("config_reloaded") != [], "a reload")
    (restart,) = rotation.events("reload_needs_restart")
    assert restart["keys"] == ["server.port"]
    async with aiohttp.ClientSession() as client:
        assert (await rotation.call(client, "/a/now"))[1]["path"] == "/v2/a/now"


async def test_a_restart_key_changed_back_no_longer_needs_a_restart(rotation: Rotation) -> None:
    """Port changed, reloaded, changed back, reloaded: the second reload compares with
    the port the proxy listens on, not with the file before it, so it names nothing
    to restart and reports no changed setting."""
    original = rotation.config.read_text()
    rotation.config.write_text(original.replace("port = 0", f"port = {free_port()}"))
    await eventually(lambda: rotation.reloads("ok") == 1, "the first reload")
    rotation.config.write_text(original)
    await eventually(lambda: rotation.reloads("ok") == 2, "the second reload")
    assert [line["keys"] for line in rotation.events("reload_needs_restart")] == [["server.port"]]
    assert [line["settings"] for line in rotation.events("config_reloaded")] == [[], []]


async def test_tracing_changed_by_a_reload_is_named_as_needing_a_restart(
    rotation: Rotation,
) -> None:
    """[tracing] added by a reload: ``reload_needs_restart`` names it; calls go on."""
    traced = config_text(rotation.vipps, str(rotation.secret))
    traced += '\n[tracing]\nendpoint = "http://127.0.0.1:9/v1/traces"\n'
    rotation.config.write_text(traced)
    await eventually(lambda: rotation.events("config_reloaded") != [], "a reload")
    (restart,) = rotation.events("reload_needs_restart")
    assert restart["keys"] == ["tracing"]


async def test_a_new_log_level_applies_to_every_logger(rotation: Rotation) -> None:
    """``[log] level = "warning"``: a successful call (an info line) is no longer logged,
    by the app's logger made at start-up; a failed one (a warning) still is."""
    quiet = config_text(rotation.vipps, str(rotation.secret)) + '\n[log]\nlevel = "warning"\n'
    rotation.config.write_text(quiet)
    await eventually(lambda: rotation.reloads("ok") == 1, "a reload")  # its line is info
    logged = len(rotation.events("request_completed"))
    async with aiohttp.ClientSession() as client:
        assert (await rotation.call(client, "/a/quiet"))[0] == 200
        assert (await rotation.call(client, "/nowhere"))[0] == 404
    (failed,) = rotation.events("request_completed")[logged:]
    assert failed["status"] == 404


async def test_a_file_changed_between_loading_and_serving_is_still_reloaded(
    vipps: RotatingVipps, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A worker serves the config its parent loaded, maybe seconds before: a secret
    rotated in between is found by the first check, not taken as already seen."""
    secret = tmp_path / "client_secret"
    secret.write_text(OLD_SECRET)
    path = tmp_path / "proxy.toml"
    path.write_text(config_text(vipps, str(secret)))
    loaded = load_config(path)
    secret.write_text(NEW_SECRET)
    proxy = await start_proxy(loaded)
    await eventually(lambda: proxy.logs.events("config_reloaded") != [], "a reload")
    async with aiohttp.ClientSession() as client, client.get(proxy.at("/a/x")) as response:
        assert (await response.json())["secret"] == NEW_SECRET


async def test_a_kubernetes_secret_swapped_by_its_data_symlink_is_picked_up(
    vipps: RotatingVipps, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A mounted Secret: ``client_secret`` links into ``..data``, a symlink Kubernetes
    swaps atomically to a new folder; the new file even has the old one's times."""
    mount = tmp_path / "secret"
    first = mount / "..2026_11_30_01_00_00.1"
    first.mkdir(parents=True)
    (first / "client_secret").write_text(OLD_SECRET)
    (mount / "..data").symlink_to(first.name)
    (mount / "client_secret").symlink_to("..data/client_secret")
    path = tmp_path / "proxy.toml"
    path.write_text(config_text(vipps, str(mount / "client_secret")))
    proxy = await start_proxy(load_config(path))
    async with aiohttp.ClientSession() as client, client.get(proxy.at("/a/warm")) as response:
        assert response.status == 200
    second = mount / "..2026_11_30_02_00_00.2"
    second.mkdir()
    (second / "client_secret").write_text(NEW_SECRET)
    times = (first / "client_secret").stat()
    os.utime(second / "client_secret", ns=(times.st_atime_ns, times.st_mtime_ns))
    (mount / "..data_tmp").symlink_to(second.name)
    os.rename(mount / "..data_tmp", mount / "..data")
    await eventually(lambda: vipps.fetched_with(NEW_SECRET) == 1, "a fetch", INTERVAL + 2)
    assert vipps.fetches_by(STEADY_ID) == 1


# --------------------------------------------------------------------------- inbound TLS


def der(cert: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())


def write_pair(cert: trustme.LeafCert, chain: Path, key: Path) -> None:
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())


Exchange = Callable[[str], Awaitable[bytes]]


@contextlib.asynccontextmanager
async def tls_connection(
    address: tuple[str, int], context: ssl.SSLContext
) -> AsyncIterator[tuple[bytes, Exchange]]:
    """A kept-alive TLS connection: the server's certificate, and a GET on it."""
    reader, writer = await asyncio.open_connection(*address, ssl=context)

    async def get(path: str) -> bytes:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: p\r\n\r\n".encode())
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            return head + await reader.readexactly(length)

    try:
        yield writer.get_extra_info("ssl_object").getpeercert(binary_form=True), get
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def test_a_renewed_server_certificate_is_presented_on_the_next_handshake(
    vipps: RotatingVipps, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """cert-manager renews tls_cert/tls_key: a new connection gets the new certificate,
    while a connection opened before keeps working."""
    ca = trustme.CA()
    old, new = ca.issue_cert("127.0.0.1"), ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(old, chain, key)
    secret = tmp_path / "client_secret"
    secret.write_text(OLD_SECRET)
    path = tmp_path / "proxy.toml"
    tls = f'tls_cert = "{chain}"\ntls_key = "{key}"'
    path.write_text(config_text(vipps, str(secret), server=tls))
    proxy = await start_proxy(load_config(path))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    async with tls_connection(proxy.address, client) as (presented, get):
        assert presented == der(old)
        assert b" 200 " in (await get("/-/health")).split(b"\r\n")[0]
        write_pair(new, chain, key)
        await eventually(lambda: proxy.logs.events("config_reloaded") != [], "a reload")
        async with tls_connection(proxy.address, client) as (renewed, get_new):
            assert renewed == der(new)
            assert b" 200 " in (await get_new("/-/health")).split(b"\r\n")[0]
        assert b" 200 " in (await get("/-/health")).split(b"\r\n")[0]
    (reloaded,) = proxy.logs.events("config_reloaded")
    assert {"server.tls_cert", "server.tls_key"} <= set(reloaded["settings"])


def client_with(ca: trustme.CA, issuer: trustme.CA) -> ssl.SSLContext:
    """A client trusting ``ca`` for the server, with a certificate ``issuer`` signed."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    issuer.issue_cert("client.test").configure_cert(context)
    return context


async def served(address: tuple[str, int], context: ssl.SSLContext) -> bool:
    """A new TLS connection gets an answer (a refused client certificate: no answer)."""
    try:
        async with tls_connection(address, context) as (_, get):
            return b" 200 " in (await get("/-/health")).split(b"\r\n")[0]
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return False


class MutualTLS:
    """A proxy config serving TLS with a certificate of ``server_ca``, and ``client_ca``
    (a file holding ``issuer``'s certificate) on or off."""

    def __init__(
        self, vipps: RotatingVipps, folder: Path, server_ca: trustme.CA, issuer: trustme.CA
    ) -> None:
        self.vipps, self.folder = vipps, folder
        self.chain, self.key = folder / "tls.crt", folder / "tls.key"
        self.client_ca = folder / "ca.pem"
        write_pair(server_ca.issue_cert("127.0.0.1"), self.chain, self.key)
        issuer.cert_pem.write_to_path(str(self.client_ca))
        (folder / "client_secret").write_text(OLD_SECRET)

    def write(self, *, with_client_ca: bool) -> Path:
        tls = f'tls_cert = "{self.chain}"\ntls_key = "{self.key}"'
        if with_client_ca:
            tls += f'\nclient_ca = "{self.client_ca}"'
        path = self.folder / "proxy.toml"
        path.write_text(config_text(self.vipps, str(self.folder / "client_secret"), server=tls))
        return path


async def test_a_replaced_client_ca_decides_new_handshakes_and_open_connections_stay(
    vipps: RotatingVipps, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """``client_ca`` replaced by another CA: new clients of the new CA get in, new ones
    of the old CA no longer do, and a connection the old CA let in stays open."""
    server_ca, old_ca, new_ca = trustme.CA(), trustme.CA(), trustme.CA()
    mtls = MutualTLS(vipps, tmp_path, server_ca, old_ca)
    proxy = await start_proxy(load_config(mtls.write(with_client_ca=True)))
    client_ca = mtls.client_ca
    old_client, new_client = client_with(server_ca, old_ca), client_with(server_ca, new_ca)
    assert (await served(proxy.address, old_client), await served(proxy.address, new_client)) == (
        True,
        False,
    )
    async with tls_connection(proxy.address, old_client) as (_, get):
        assert b" 200 " in (await get("/-/health")).split(b"\r\n")[0]
        new_ca.cert_pem.write_to_path(str(client_ca))
        await eventually(lambda: proxy.logs.events("config_reloaded") != [], "a reload")
        assert await served(proxy.address, new_client)
        assert not await served(proxy.address, old_client)
        assert b" 200 " in (await get("/-/health")).split(b"\r\n")[0]


async def test_client_ca_taken_out_by_a_reload_still_guards_until_a_restart(
    vipps: RotatingVipps, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The file drops ``client_ca`` (a restart applies that): new clients of the CA still
    get in and clients without a certificate still do not; the reload names the key."""
    server_ca, client_ca_issuer = trustme.CA(), trustme.CA()
    mtls = MutualTLS(vipps, tmp_path, server_ca, client_ca_issuer)
    proxy = await start_proxy(load_config(mtls.write(with_client_ca=True)))
    with_cert, without = client_with(server_ca, client_ca_issuer), ssl.create_default_context()
    server_ca.configure_trust(without)
    mtls.write(with_client_ca=False)
    await eventually(lambda: proxy.logs.events("config_reloaded") != [], "a reload")
    assert (await served(proxy.address, with_cert), await served(proxy.address, without)) == (
        True,
        False,
    )
    (needs,) = proxy.logs.events("reload_needs_restart")
    assert "server.client_ca" in needs["keys"]


# --------------------------------------------------------------------------- workers


def workers_config(
    path: Path, emulator: RunningEmulator, port: int, echo: str, interval: float
) -> None:
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
workers = 2
reload_interval = {interval}

[credentials.main]
token_url = "{emulator.token_url}"
client_id = "demo-client-id"
client_secret = "demo-client-secret"
subscription_key = "demo-subscription-key"

[[routes]]
prefix = "/"
upstream = "{emulator.url}/echo/{echo}"
auth = "none"
"""
    )


async def paths_seen(process: ProxyProcess, connections: int) -> set[str]:
    """The upstream paths answered to one call each on ``connections`` new connections."""
    seen = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        for i in range(connections):
            async with client.get(process.url(f"/call-{i}")) as response:
                assert response.status == 200
                seen.add((await response.json())["raw_path"].removesuffix(f"/call-{i}"))
    return seen


@pytest.mark.parametrize("trigger", ["sighup", "file"])
async def test_every_worker_reloads_on_sighup_to_the_parent_or_on_its_own(
    emulator: RunningEmulator, tmp_path: Path, trigger: str
) -> None:
    """``workers = 2``: a SIGHUP to the parent (file checks off) reaches both workers; or
    with no signal, each worker's own file check finds the change. Either way a changed
    route shows on every one of many new connections."""
    port = free_port()
    path = tmp_path / "proxy.toml"
    interval = INTERVAL if trigger == "file" else 0
    workers_config(path, emulator, port, "one", interval)
    process = await asyncio.to_thread(ProxyProcess, path, port, tmp_path / "proxy.log")
    try:
        assert await paths_seen(process, 20) == {"/echo/one"}
        workers_config(path, emulator, port, "two", interval)
        if trigger == "sighup":
            process.process.send_signal(signal.SIGHUP)

        def reloaded() -> int:
            return process.output().count('"event":"config_reloaded"')

        await eventually(lambda: reloaded() == 2, "both workers reloading")
        assert await paths_seen(process, 40) == {"/echo/two"}
        assert process.process.poll() is None
        assert process.output().count('"event":"proxy_started"') == 2
    finally:
        await asyncio.to_thread(process.terminate)
        process.close()


# --------------------------------------------------------------------------- outbound TLS


async def test_a_renewed_client_certificate_is_presented_on_new_upstream_connections(
    vipps: RotatingVipps, start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """``[tls] client_cert`` renewed: calls after the reload reach the upstream on new
    connections that present the new certificate, though the old kept-alive one is
    still open in the pool."""
    upstream_ca, client_ca = trustme.CA(), trustme.CA()
    seen: list[str] = []

    async def who(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        seen.append(dict(peer["subjectAltName"])["DNS"] if peer else "")
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", who)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    upstream_ca.issue_cert("127.0.0.1").configure_cert(context)
    client_ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        port = runner.addresses[0][1]
        bundle, chain, key = tmp_path / "up-ca.pem", tmp_path / "client.pem", tmp_path / "c.key"
        upstream_ca.cert_pem.write_to_path(str(bundle))
        write_pair(client_ca.issue_cert("client-one.test"), chain, key)
        secret = tmp_path / "client_secret"
        secret.write_text(OLD_SECRET)
        path = tmp_path / "proxy.toml"
        text = config_text(vipps, str(secret))
        route = (
            f'[[routes]]\nprefix = "/mtls"\nupstream = "https://127.0.0.1:{port}"\nauth = "none"\n'
        )
        tls = f'[tls]\nca_bundle = "{bundle}"\nclient_cert = "{chain}"\nclient_key = "{key}"\n'
        path.write_text(f"{text}\n{route}\n{tls}")
        proxy = await start_proxy(load_config(path))
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                async with client.get(proxy.at("/mtls/x")) as response:
                    assert response.status == 200
            write_pair(client_ca.issue_cert("client-two.test"), chain, key)
            await eventually(lambda: proxy.logs.events("config_reloaded") != [], "a reload")
            async with client.get(proxy.at("/mtls/y")) as response:
                assert response.status == 200
        assert seen == ["client-one.test"] * 3 + ["client-two.test"]
        (reloaded,) = proxy.logs.events("config_reloaded")
        assert {"tls.client_cert", "tls.client_key"} <= set(reloaded["settings"])
    finally:
        await runner.cleanup()


def server_file(tmp_path: Path, name: str, server: str) -> Path:
    path = tmp_path / name
    path.write_text(
        f"[server]\n{server}\n\n[credentials.main]\n"
        'token_url = "http://127.0.0.1:9/accesstoken/get"\n'
        f'client_id = "{STEADY_ID}"\nclient_secret = "{STEADY_SECRET}"\n'
        f'subscription_key = "{SUBSCRIPTION_KEY}"\nmerchant_serial_number = "123456"\n'
    )
    return path


def test_a_reload_cannot_open_a_listener_that_stays_beyond_loopback_to_everyone(
    tmp_path: Path,
) -> None:
    """Started on every address, guarded by a client key. The new file moves ``host`` to
    loopback (which alone would allow any client) and drops the key: ``host`` only
    changes with a restart, so the process would serve every address unguarded. The
    reload is refused, naming the key; the same file is fine for a loopback process."""
    key = 'client_keys = ["a-client-key-of-32-characters-00"]'
    started = load_config(server_file(tmp_path, "a.toml", f'host = "0.0.0.0"\n{key}'))
    opened = server_file(tmp_path, "b.toml", 'host = "127.0.0.1"\nallow_clients = ["0.0.0.0/0"]')
    with pytest.raises(ConfigError) as refused:
        as_running(started, load_config(opened))
    assert str(refused.value).startswith("server.allow_clients[0]: 0.0.0.0/0 lets in public")
    on_loopback = load_config(server_file(tmp_path, "c.toml", 'host = "127.0.0.1"'))
    assert as_running(on_loopback, load_config(opened)).server.host == "127.0.0.1"


def test_a_reload_cannot_lean_on_client_ca_that_only_a_restart_turns_on(tmp_path: Path) -> None:
    """Started on every address without TLS, guarded by a client key. The new file adds
    TLS with ``client_ca`` and drops the key: the listener stays plain HTTP until a
    restart, so the reload is refused, naming the key."""
    for name in ("tls.crt", "tls.key", "ca.pem"):
        (tmp_path / name).write_text("not read by load_config\n")
    key = 'client_keys = ["a-client-key-of-32-characters-00"]'
    public = 'host = "0.0.0.0"\nallow_clients = ["0.0.0.0/0"]'
    started = load_config(server_file(tmp_path, "a.toml", f"{public}\n{key}"))
    tls = f'tls_cert = "{tmp_path / "tls.crt"}"\ntls_key = "{tmp_path / "tls.key"}"'
    guarded = server_file(
        tmp_path, "b.toml", f'{public}\n{tls}\nclient_ca = "{tmp_path / "ca.pem"}"'
    )
    with pytest.raises(ConfigError) as refused:
        as_running(started, load_config(guarded))
    assert str(refused.value).startswith("server.allow_clients[0]: 0.0.0.0/0 lets in public")
