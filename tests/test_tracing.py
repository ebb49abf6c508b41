"""Tracing: spans sent over OTLP/HTTP to a real receiver, W3C trace context kept.

The receiver is an aiohttp server decoding each export with ``opentelemetry-proto``,
as a collector would; the upstream is an aiohttp server recording what it received.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client import CollectorRegistry

from proxy.app import POOL_SIZE
from proxy.config import ConfigError, TracingConfig, describe, load_config
from proxy.runner import ProxyRunner
from proxy.tracing import MAX_QUEUE, Tracing
from tests.conftest import (
    DEMO_CLIENT_ID,
    LogSink,
    ProxyFactory,
    RunningEmulator,
    RunningProxy,
    all_secrets,
    free_port,
    make_config,
)
from tests.processes import ProxyProcess, write_config
from tests.webhook_peers import HOOK, LegacyApp, payment_event, vipps_headers, webhooks_table

CEILING = 60.0  # seconds any awaited event may take on a busy machine
CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"
COLLECTOR_KEY = "collector-key-5b0c8e1d"
TOKEN = "tok-9f3e2a71c4-never-exported"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP's SpanKind numbers


@dataclass
class Span:
    """One exported span, as the receiver decoded it."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]]
    events: list[str]


@dataclass
class Receiver:
    """A minimal OTLP/HTTP trace receiver: every span and every raw export kept."""

    spans: list[Span] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.raw.append(body)
        self.headers.append(dict(request.headers))
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            self.resources.append(_attributes(resource_spans.resource.attributes))
            for scope in resource_spans.scope_spans:
                self.spans.extend(_span(s) for s in scope.spans)
        self.changed.set()
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type="application/x-protobuf")

    async def wait_for(self, found: Callable[[list[Span]], bool]) -> list[Span]:
        async with asyncio.timeout(CEILING):
            while not found(self.spans):
                self.changed.clear()
                await self.changed.wait()
        return self.spans

    def named(self, prefix: str) -> list[Span]:
        return [s for s in self.spans if s.name.startswith(prefix)]


def _value(value: AnyValue) -> Any:
    return getattr(value, value.WhichOneof("value") or "string_value")


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _span(s: Any) -> Span:
    return Span(
        name=s.name,
        kind=s.kind,
        trace_id=s.trace_id.hex(),
        span_id=s.span_id.hex(),
        parent=s.parent_span_id.hex(),
        attributes=_attributes(s.attributes),
        links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
        events=[e.name for e in s.events],
    )


@dataclass
class Recorder:
    """An upstream answering 200, keeping each request's raw header lines."""

    heads: list[list[tuple[bytes, bytes]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.heads.append(list(request.raw_headers))
        return web.json_response({"ok": True})

    def header(self, name: bytes, index: int = -1) -> list[bytes]:
        return [v for k, v in self.heads[index] if k.lower() == name]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", found.handle)
    server = await aiohttp_server(app, host="127.0.0.1")
    found.url = str(server.make_url("/v1/traces"))  # type: ignore[attr-defined]
    return found


@pytest.fixture
async def recorder(aiohttp_server: Any) -> tuple[Recorder, TestServer]:
    found = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    return found, await aiohttp_server(app, host="127.0.0.1")


TracedProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
def traced(
    start_proxy: ProxyFactory, emulator: RunningEmulator, recorder: tuple[Recorder, TestServer]
) -> TracedProxy:
    """The proxy in front of the recording upstream, tokens from the emulator."""

    async def factory(
        endpoint: str, token_url: str = "", upstream: str = "", **tracing: Any
    ) -> RunningProxy:
        extra = {"tracing": {"endpoint": endpoint, **tracing}} if endpoint else {}
        upstream = upstream or str(recorder[1].make_url("/"))
        server = {"max_connections_per_client": 1024}  # the pool-wait test holds 257
        config = make_config(token_url or emulator.token_url, upstream, server=server, extra=extra)
        return await start_proxy(config)

    return factory


def _url(receiver: Receiver) -> str:
    return cast(str, receiver.url)  # type: ignore[attr-defined]


async def _get(proxy: RunningProxy, path: str, **headers: str) -> aiohttp.ClientResponse:
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy.at(path), headers=headers) as r,
    ):
        await r.read()
        return r


async def test_server_span_has_the_call_attributes_and_a_client_span_child(
    traced: TracedProxy, receiver: Receiver
) -> None:
    """A proxied call exports a server span (method, path without query, route, status,
    client, credentials) and the upstream call as its client child."""
    proxy = await traced(_url(receiver))
    assert (await _get(proxy, "/epayment/v1/payments?secret=1")).status == 200
    spans = await receiver.wait_for(lambda s: any(x.kind == SERVER for x in s))
    server = next(s for s in spans if s.kind == SERVER)
    assert server.name == "GET /"
    assert server.attributes == {
        "http.request.method": "GET",
        "url.path": "/epayment/v1/payments",
        "client.address": "127.0.0.1",
        "http.response.status_code": 200,
        "http.route": "/",
        "vipps.credentials": "main",
    }
    client = next(s for s in spans if s.kind == CLIENT)
    assert (client.trace_id, client.parent) == (server.trace_id, server.span_id)
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["vipps.retried_stale_connection"] is False


@pytest.fixture
async def held_token(aiohttp_server: Any) -> tuple[str, asyncio.Event]:
    """A token endpoint that answers only once released."""
    release = asyncio.Event()

    async def token(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response(
            {"token_type": "Bearer", "expires_in": "3600", "access_token": TOKEN}
        )

    app = web.Application()
    app.router.add_post("/accesstoken/get", token)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url("/accesstoken/get")), release


async def test_call_that_waited_for_a_cold_token_links_the_token_fetch_span(
    traced: TracedProxy, receiver: Receiver, held_token: tuple[str, asyncio.Event]
) -> None:
    """A call that waits for the first token fetch links to that fetch's span, which
    names the credential set and the outcome and nothing else."""
    token_url, release = held_token
    proxy = await traced(_url(receiver), token_url=token_url)
    call = asyncio.create_task(_get(proxy, "/epayment/v1/payments"))
    state = cast(ProxyRunner, proxy.runner).proxy.state
    async with asyncio.timeout(CEILING):
        while state.metrics.active < 1:  # noqa: ASYNC110 - a counter, no event to await
            await asyncio.sleep(0.01)
    release.set()
    assert (await call).status == 200
    spans = await receiver.wait_for(lambda s: len({x.kind for x in s}) == 3)
    fetch = next(s for s in spans if s.name == "token_fetch")
    server = next(s for s in spans if s.kind == SERVER)
    assert fetch.attributes == {"vipps.credentials": "main", "vipps.token.outcome": "ok"}
    assert (fetch.trace_id, fetch.span_id) in server.links


async def test_client_traceparent_makes_the_server_span_its_child(
    traced: TracedProxy, receiver: Receiver
) -> None:
    """A client's traceparent puts our server span in the client's trace, under its span."""
    proxy = await traced(_url(receiver))
    await _get(proxy, "/epayment/v1/payments", traceparent=CLIENT_TRACEPARENT)
    spans = await receiver.wait_for(lambda s: any(x.kind == SERVER for x in s))
    server = next(s for s in spans if s.kind == SERVER)
    assert (server.trace_id, server.parent) == (CLIENT_TRACE_ID, CLIENT_SPAN_ID)


async def test_upstream_receives_the_client_span_as_its_parent(
    traced: TracedProxy, receiver: Receiver, recorder: tuple[Recorder, TestServer]
) -> None:
    """The upstream gets one traceparent: our client span's, in the client's trace,
    and the client's tracestate carried on."""
    proxy = await traced(_url(receiver))
    await _get(
        proxy, "/epayment/v1/payments", traceparent=CLIENT_TRACEPARENT, tracestate="vendor=1"
    )
    spans = await receiver.wait_for(lambda s: any(x.kind == CLIENT for x in s))
    client = next(s for s in spans if s.kind == CLIENT)
    sent = recorder[0].header(b"traceparent")
    assert sent == [f"00-{CLIENT_TRACE_ID}-{client.span_id}-01".encode()]
    assert recorder[0].header(b"tracestate") == [b"vendor=1"]


@pytest.mark.parametrize(
    ("traceparent", "tracestate"),
    [
        (CLIENT_TRACEPARENT.encode(), b"vendor=1"),
        (b"  00-Not-A-Valid-Parent  x", b"a=1,,  b=2 "),
    ],
)
async def test_trace_headers_pass_byte_for_byte_with_tracing_off(
    traced: TracedProxy,
    recorder: tuple[Recorder, TestServer],
    traceparent: bytes,
    tracestate: bytes,
) -> None:
    """Without [tracing], traceparent and tracestate reach the upstream as sent."""
    proxy = await traced("")
    host, port = proxy.address
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        b"GET /epayment/v1/payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"traceparent: " + traceparent + b"\r\ntracestate: " + tracestate + b"\r\n\r\n"
    )
    await asyncio.wait_for(reader.read(), CEILING)
    writer.close()
    assert recorder[0].header(b"traceparent") == [traceparent.strip()]
    assert recorder[0].header(b"tracestate") == [tracestate.strip()]


async def test_request_completed_line_carries_the_trace_and_span_ids(
    traced: TracedProxy, receiver: Receiver
) -> None:
    """Each request_completed line names the server span it belongs to."""
    proxy = await traced(_url(receiver))
    await _get(proxy, "/epayment/v1/payments")
    spans = await receiver.wait_for(lambda s: any(x.kind == SERVER for x in s))
    server = next(s for s in spans if s.kind == SERVER)
    (line,) = proxy.logs.events("request_completed")
    assert (line["trace_id"], line["span_id"]) == (server.trace_id, server.span_id)


async def test_no_secret_in_any_exported_span(
    traced: TracedProxy, receiver: Receiver, held_token: tuple[str, asyncio.Event]
) -> None:
    """No span, event, link or resource carries a credential, the collector's key or
    the token (the collector's key goes only in the export's own headers)."""
    token_url, release = held_token
    release.set()
    proxy = await traced(_url(receiver), token_url=token_url, headers={"x-api-key": COLLECTOR_KEY})
    await _get(proxy, "/epayment/v1/payments?x=1")
    await receiver.wait_for(lambda s: len({x.kind for x in s}) == 3)
    secrets = all_secrets(proxy.config, TOKEN)
    assert COLLECTOR_KEY in secrets
    assert COLLECTOR_KEY in str(receiver.headers)  # the collector was sent its key ...
    exported = b"".join(receiver.raw)
    for secret in [*secrets, DEMO_CLIENT_ID]:  # ... and no span carries any secret
        assert secret.encode() not in exported, secret
    assert COLLECTOR_KEY not in proxy.logs.text()


async def test_collector_down_costs_calls_nothing(
    traced: TracedProxy, recorder: tuple[Recorder, TestServer]
) -> None:
    """With nothing listening at the endpoint, 1,000 calls all pass."""
    proxy = await traced(f"http://127.0.0.1:{free_port()}/v1/traces")
    connector = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> int:
            async with session.get(proxy.at(f"/epayment/v1/payments/{i}")) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(one(i) for i in range(1000)))
    assert statuses == [200] * 1000
    assert len(recorder[0].heads) == 1000


def test_tracing_without_the_extra_exits_2_naming_the_key(tmp_path: Path) -> None:
    """[tracing] set while OpenTelemetry is not installed: one line, exit 2."""
    config = tmp_path / "proxy.toml"
    config.write_text(
        '[credentials.main]\ntoken_url = "https://apitest.vipps.no/accesstoken/get"\n'
        'client_id = "a"\nclient_secret = "b"\nsubscription_key = "c"\n'
        'merchant_serial_number = "123456"\n'
        '[[routes]]\nprefix = "/"\nupstream = "https://apitest.vipps.no"\n'
        'credentials = ["main"]\n'
        '[tracing]\nendpoint = "http://127.0.0.1:4318/v1/traces"\n'
    )
    # OpenTelemetry made absent for this process only, as if the extra were not installed.
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from proxy.cli import main\n"
        f"sys.argv = ['vipps-proxy', '--config', {str(config)!r}]\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=CEILING
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "tracing.endpoint" in done.stderr
    assert "vipps-proxy[tracing]" in done.stderr


class FailingOnce(LegacyApp):
    """The legacy app answering the first delivery 500, then 200."""

    async def handle(self, request: web.Request) -> web.Response:
        answer = await super().handle(request)
        self.failing.clear()
        return answer


async def test_webhook_deliveries_link_to_their_receive(
    start_proxy: ProxyFactory,
    emulator: RunningEmulator,
    receiver: Receiver,
    aiohttp_server: Any,
    tmp_path: Path,
) -> None:
    """A webhook's receive span says it was accepted and its event id; each delivery
    attempt (a 500, then a 200) is a span with its number and status, linked to it."""
    legacy = FailingOnce(failing={"order-1"})
    app = await aiohttp_server(legacy.app(), host="127.0.0.1")
    hook = webhooks_table(str(app.make_url("/vipps/events")))
    store = {"path": str(tmp_path / "events.sqlite3")}
    extra = {"webhooks": [hook], "store": store, "tracing": {"endpoint": _url(receiver)}}
    proxy = await start_proxy(make_config(emulator.token_url, emulator.url, extra=extra))
    body = payment_event("order-1")
    host, port = proxy.address
    signed = vipps_headers(body, f"{host}:{port}", HOOK)
    async with (
        aiohttp.ClientSession() as client,
        client.post(
            proxy.at(HOOK), data=body, headers={**signed, "traceparent": CLIENT_TRACEPARENT}
        ) as response,
    ):
        assert response.status == 200
        event_id = response.headers["Vipps-Proxy-Event-Id"]
    spans = await receiver.wait_for(lambda s: len([x for x in s if x.kind == CLIENT]) == 2)
    receive = next(s for s in spans if s.kind == SERVER)
    assert receive.name == f"POST {HOOK}"
    assert receive.parent == CLIENT_SPAN_ID
    assert receive.attributes["vipps.webhook.result"] == "accepted"
    assert receive.attributes["vipps.webhook.event_id"] == event_id
    attempts = sorted(
        (s for s in spans if s.name == "webhook_delivery"),
        key=lambda s: s.attributes["vipps.webhook.attempt"],
    )
    assert [a.attributes["http.response.status_code"] for a in attempts] == [500, 200]
    assert [a.attributes["vipps.webhook.attempt"] for a in attempts] == [1, 2]
    for attempt in attempts:
        assert attempt.links == [(receive.trace_id, receive.span_id)]
        assert attempt.attributes["vipps.webhook.event_id"] == event_id
    sent = [r.header("traceparent")[:-3] for r in legacy.received]  # less the flags
    assert sent == [f"00-{a.trace_id}-{a.span_id}" for a in attempts]


async def test_a_call_waiting_for_a_pooled_connection_notes_the_wait(
    traced: TracedProxy, receiver: Receiver, aiohttp_server: Any
) -> None:
    """With every upstream connection in use, the next call's client span has a
    ``pool_wait`` event, then ``pool_connection`` once a connection is free."""
    release, held = asyncio.Event(), Counted()

    async def hold(request: web.Request) -> web.Response:
        held.arrived()
        await release.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hold)
    upstream = await aiohttp_server(app, host="127.0.0.1")
    proxy = await traced(_url(receiver), upstream=str(upstream.make_url("/")))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(path: str) -> int:
            async with session.get(proxy.at(path)) as r:
                await r.read()
                return r.status

        busy = [asyncio.create_task(one(f"/hold/{i}")) for i in range(POOL_SIZE)]
        await held.reach(POOL_SIZE)
        waiting = asyncio.create_task(one("/waits"))
        state = cast(ProxyRunner, proxy.runner).proxy.state
        async with asyncio.timeout(CEILING):
            while state.metrics.active <= POOL_SIZE:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.01)
        release.set()
        assert await asyncio.gather(*busy, waiting) == [200] * (POOL_SIZE + 1)
    spans = await receiver.wait_for(lambda s: any(x.events for x in s))
    assert [x.events for x in spans if x.events] == [["pool_wait", "pool_connection"]]


@dataclass
class Counted:
    """A count that can be waited for."""

    count: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def arrived(self) -> None:
        self.count += 1
        self.changed.set()

    async def reach(self, n: int) -> None:
        async with asyncio.timeout(CEILING):
            while self.count < n:
                self.changed.clear()
                await self.changed.wait()


async def test_spans_dropped_by_a_full_queue_are_counted_and_logged_once(
    aiohttp_server: Any, log_sink: LogSink
) -> None:
    """A collector that never answers: the queue fills, each span past it is counted
    in vipps_proxy_trace_spans_dropped_total, and one warning says how many."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=400)  # not retried: the rest fails fast

    app = web.Application()
    app.router.add_post("/v1/traces", hang)
    collector = await aiohttp_server(app, host="127.0.0.1")
    registry = CollectorRegistry()
    config = TracingConfig(endpoint=str(collector.make_url("/v1/traces")))
    tracing = Tracing(config, registry)
    try:
        for i in range(3 * MAX_QUEUE):
            tracing.tracer.start_span(f"span-{i}").end()
    finally:
        release.set()
        await tracing.close()
    dropped = registry.get_sample_value("vipps_proxy_trace_spans_dropped_total")
    assert dropped is not None
    assert dropped > 0
    (line,) = log_sink.events("trace_spans_dropped")
    assert line["dropped"] == 1
    assert line["level"] == "warning"


async def test_each_worker_exports_its_own_spans(
    emulator: RunningEmulator,
    receiver: Receiver,
    recorder: tuple[Recorder, TestServer],
    tmp_path: Path,
) -> None:
    """With workers = 2, spans arrive from both processes (two service.instance.ids)."""
    port = free_port()
    config = write_config(
        tmp_path / "proxy.toml", str(emulator.token_url), str(recorder[1].make_url("/")), port
    )
    with config.open("a") as more:
        more.write(f'\n[tracing]\nendpoint = "{_url(receiver)}"\n')
    text = config.read_text().replace("[server]\n", "[server]\nworkers = 2\n", 1)
    config.write_text(text)
    process = await asyncio.to_thread(ProxyProcess, config, port, tmp_path / "proxy.log")
    try:
        async with asyncio.timeout(CEILING):
            while len({r.get("service.instance.id") for r in receiver.resources}) < 2:
                async with (  # a new connection each time: the kernel picks the worker
                    aiohttp.ClientSession() as session,
                    session.get(process.url("/epayment/v1/payments")) as r,
                ):
                    assert r.status == 200
                await asyncio.sleep(0.05)  # calls keep coming until both have exported
    finally:
        await asyncio.to_thread(process.terminate)
        process.close()
    assert {r["service.name"] for r in receiver.resources} == {"vipps-proxy"}


@pytest.mark.parametrize(
    ("tracing", "key"),
    [
        ({"endpoint": "127.0.0.1:4318"}, "tracing.endpoint"),
        ({"endpoint": "ftp://collector/v1/traces"}, "tracing.endpoint"),
        ({"endpoint": "http://c:4318/v1/traces", "sample_ratio": 1.5}, "tracing.sample_ratio"),
        ({"endpoint": "http://c:4318/v1/traces", "sample_ratio": -0.1}, "tracing.sample_ratio"),
        ({"endpoint": "http://c:4318/v1/traces", "headers": {"k": 1}}, "tracing.headers.k"),
        ({"endpoint": "http://c:4318/v1/traces", "sampler": "always"}, "tracing.sampler"),
    ],
)
def test_a_bad_tracing_value_names_its_key(tracing: dict[str, Any], key: str) -> None:
    """Each [tracing] mistake is refused naming the key."""
    with pytest.raises(ConfigError) as refused:
        make_config("http://127.0.0.1:1/token", "http://127.0.0.1:1", extra={"tracing": tracing})
    assert refused.value.key == key


def test_collector_headers_are_masked_in_the_effective_config() -> None:
    """``vipps-proxy check`` shows the collector's header names, never their values."""
    tracing = {"endpoint": "http://c:4318/v1/traces", "headers": {"x-api-key": COLLECTOR_KEY}}
    config = make_config(
        "http://127.0.0.1:1/token", "http://127.0.0.1:1", extra={"tracing": tracing}
    )
    shown = describe(config)["tracing"]
    assert shown["headers"] == {"x-api-key": "***"}
    assert COLLECTOR_KEY not in str(describe(config))
    assert COLLECTOR_KEY in [s.reveal() for s in config.secrets]  # so logs scrub it


HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80)
TRACEPARENT_SHAPE = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]")


async def test_any_client_trace_context_gives_the_upstream_one_wellformed_traceparent(
    traced: TracedProxy, receiver: Receiver, recorder: tuple[Recorder, TestServer]
) -> None:
    """Whatever traceparent and tracestate a client sends (valid, garbled, several),
    the call passes and the upstream gets exactly one traceparent, well formed, in the
    client's trace when the client's was valid."""
    proxy = await traced(_url(receiver))
    host, port = proxy.address
    loop = asyncio.get_running_loop()

    async def send(parents: list[str], state: str) -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        lines = b"".join(b"traceparent: " + p.encode() + b"\r\n" for p in parents)
        writer.write(
            b"GET /epayment/v1/payments HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + lines
            + b"tracestate: "
            + state.encode()
            + b"\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), CEILING)
        writer.close()
        return answer

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.one_of(HEADER_TEXT, st.just(CLIENT_TRACEPARENT)), max_size=3), HEADER_TEXT)
    def check(parents: list[str], state: str) -> None:
        answer = asyncio.run_coroutine_threadsafe(send(parents, state), loop).result(CEILING)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        (sent,) = recorder[0].header(b"traceparent")
        assert TRACEPARENT_SHAPE.fullmatch(sent), sent
        if parents == [CLIENT_TRACEPARENT]:
            assert sent.split(b"-")[1] == CLIENT_TRACE_ID.encode()

    await asyncio.to_thread(check)


OFF_PROBE = """
import asyncio, sys
import aiohttp
from proxy.config import parse_config
from proxy.redact import Redactor
from proxy.server import start

async def main(upstream: str) -> None:
    doc = {
        "server": {"host": "127.0.0.1", "port": 0},
        "credentials": {"main": {
            "token_url": upstream + "/accesstoken/get", "client_id": "a",
            "client_secret": "b", "subscription_key": "c",
            "merchant_serial_number": "123456"}},
        "routes": [{"prefix": "/", "upstream": upstream, "auth": "none"}],
    }
    config = parse_config(doc, {})
    runner = await start(config, Redactor(config.secrets))
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{host}:{port}/x") as r:
            assert r.status == 200, r.status
    await runner.cleanup()
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

asyncio.run(main(sys.argv[1]))
"""


async def test_tracing_off_never_loads_opentelemetry(
    recorder: tuple[Recorder, TestServer],
) -> None:
    """A proxy without [tracing] serves a call without importing any OpenTelemetry
    module (in a process of its own, where nothing else imported one)."""
    upstream = str(recorder[1].make_url("")).rstrip("/")
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-c", OFF_PROBE, upstream, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(probe.communicate(), CEILING)
    assert probe.returncode == 0, err.decode()
    assert out.decode().strip().splitlines()[-1] == "[]"
    assert len(recorder[0].heads) == 1


@pytest.mark.parametrize("endpoint", ["", "http://otel-collector:4318/v1/traces"])
def test_the_container_config_takes_the_tracing_endpoint_from_the_environment(
    endpoint: str,
) -> None:
    """config/container.toml: VIPPS_PROXY_TRACING_ENDPOINT turns tracing on; unset, off."""
    env = {"VIPPS_CLIENT_ID": "a", "VIPPS_CLIENT_SECRET": "b", "VIPPS_SUBSCRIPTION_KEY": "c"}
    if endpoint:
        env["VIPPS_PROXY_TRACING_ENDPOINT"] = endpoint
    config = load_config(Path(__file__).parent.parent / "config" / "container.toml", env)
    assert config.tracing.endpoint == endpoint
