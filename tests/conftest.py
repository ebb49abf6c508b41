"""Shared fixtures: the real proxy server on loopback, upstreams, and a log sink.

The proxy is started exactly as production starts it (``proxy.server.start``), on an
ephemeral loopback port; tests talk to it over real sockets with aiohttp's client.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, settings
from yarl import URL

from proxy.config import Config, parse_config
from proxy.logs import configure_logging
from proxy.redact import Redactor
from proxy.server import start

from . import spec_answers
from .loopback import loopback_servers  # noqa: F401 - a fixture for every test module

# No per-example deadline, and no health check on how long making examples takes: on a
# busy machine an example that takes 200 ms is slow, not wrong. (A test that sets its own
# settings keeps these unless it says otherwise.)
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

SPEC_LOG = spec_answers.enable()  # before any emulator is created or started


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many emulator answers were checked against the specs, and any violation."""
    for line in spec_answers.summary(SPEC_LOG).lines():
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """An emulator answer that breaks its spec fails the run, whatever the tests said."""
    if spec_answers.summary(SPEC_LOG).violations:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


class LogSink:
    """A binary stream that keeps everything logged, for tests to read and search."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.data.splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]


@pytest.fixture
def log_sink() -> LogSink:
    sink = LogSink()
    configure_logging("debug", "json", Redactor(), sink, cache=False)  # type: ignore[arg-type]
    return sink


@dataclass
class RunningProxy:
    runner: web.BaseRunner
    url: URL
    config: Config
    logs: LogSink

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.runner.addresses[0][:2]
        return str(host), int(port)

    def at(self, path: str) -> str:
        """The proxy's URL for a raw path (with query), never re-encoded."""
        return f"{self.url}{path}"


ProxyFactory = Callable[[Config], Awaitable[RunningProxy]]


@pytest.fixture
async def start_proxy(log_sink: LogSink) -> AsyncIterator[ProxyFactory]:
    """Starts the proxy for a config, on 127.0.0.1 and a free port; stops it after."""
    runners: list[web.BaseRunner] = []

    async def factory(config: Config) -> RunningProxy:
        redactor = Redactor(config.secrets)
        configure_logging("debug", "json", redactor, log_sink, cache=False)  # type: ignore[arg-type]
        runner = await start(config, redactor)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return RunningProxy(runner, URL(f"http://{host}:{port}"), config, log_sink)

    yield factory
    for runner in runners:
        await runner.cleanup()


def make_config(
    token_url: str | URL,
    upstream: str | URL | None = None,
    *,
    credentials: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    """A config through the real validator: one credential set, one route ``/``."""
    creds = {
        "token_url": str(token_url),
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
        "subscription_key": DEMO_SUBSCRIPTION_KEY,
        "merchant_serial_number": DEMO_MSN,
        **(credentials or {}),
    }
    doc: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_timeout": 2, **(server or {})},
        "credentials": {"main": creds},
    }
    if upstream is not None:
        doc["routes"] = [{"prefix": "/", "upstream": str(upstream), **(route or {})}]
    doc.update(extra or {})
    return parse_config(doc, {})


from proxy.emulator import (  # noqa: E402 - after the helpers it is used beside
    DEMO_SALES_UNITS,
    EmulatorSettings,
    EmulatorState,
    create_emulator,
    emulator_state,
)

DEMO = DEMO_SALES_UNITS[0]
DEMO_CLIENT_ID = DEMO.client_id
DEMO_CLIENT_SECRET = DEMO.client_secret
DEMO_SUBSCRIPTION_KEY = DEMO.subscription_key
DEMO_MSN = DEMO.merchant_serial_number

#: The seven fields of a Vipps token response (all strings in the real API).
TOKEN_FIELDS = frozenset(
    {
        "token_type",
        "expires_in",
        "ext_expires_in",
        "expires_on",
        "not_before",
        "resource",
        "access_token",
    }
)


@dataclass
class RunningEmulator:
    server: TestServer
    state: EmulatorState

    @property
    def url(self) -> URL:
        return URL(str(self.server.make_url("/")).rstrip("/"))

    @property
    def token_url(self) -> URL:
        return self.server.make_url("/accesstoken/get")


EmulatorFactory = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
async def start_emulator(aiohttp_server: Any) -> EmulatorFactory:
    """Starts the Vipps emulator on 127.0.0.1 with the given settings."""

    async def factory(**settings: Any) -> RunningEmulator:
        app = create_emulator(EmulatorSettings(**settings))
        server = await aiohttp_server(app, host="127.0.0.1")
        return RunningEmulator(server, emulator_state(app))

    return factory


@pytest.fixture
async def emulator(start_emulator: EmulatorFactory) -> RunningEmulator:
    return await start_emulator()


@pytest.fixture
async def proxy(emulator: RunningEmulator, start_proxy: ProxyFactory) -> RunningProxy:
    """The proxy in front of the emulator, one credential set, route ``/``."""
    return await start_proxy(make_config(emulator.token_url, emulator.url))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def all_secrets(config: Config, *extra: str) -> list[str]:
    """Every secret value a test must never find in output."""
    return [s.reveal() for s in config.secrets] + [e for e in extra if e]
