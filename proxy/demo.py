"""``vipps-proxy demo`` and ``vipps-proxy emulator``: the emulator, alone or behind us."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson
import structlog
from aiohttp import web

from proxy import events
from proxy.config import Config, load_config
from proxy.emulator import EmulatorSettings, create_admin_app, create_emulator, emulator_state
from proxy.emulator.webhooks import EVENT_TYPES, Registration, webhook_hub
from proxy.logs import configure_logging
from proxy.redact import Redactor
from proxy.secret import Secret
from proxy.server import loop_factory, serve
from proxy.startup import StartupError, listen

_log = structlog.get_logger("proxy.demo")


async def _start_emulator(
    host: str, port: int, admin_port: int, settings: EmulatorSettings, port_flag: str = "--port"
) -> list[web.AppRunner]:
    """The emulator (and its admin app if ``admin_port``); a port it cannot have raises
    `StartupError` naming ``port_flag`` or ``--admin-port``."""
    app = create_emulator(settings)
    runners = [web.AppRunner(app, access_log=None)]
    if admin_port:
        runners.append(web.AppRunner(create_admin_app(emulator_state(app)), access_log=None))
    keys = (port_flag, "--admin-port")
    try:
        for runner, p, key in zip(runners, (port, admin_port), keys, strict=False):
            await runner.setup()
            await listen(web.TCPSite(runner, host, p), key, host, p, "--host")
    except StartupError:
        for runner in runners:
            await runner.cleanup()
        raise
    _log.info(
        events.EMULATOR_STARTED,
        url=f"http://{host}:{port}",
        faults_url=f"http://{host}:{admin_port}" if admin_port else None,
    )
    return runners


def run_emulator(host: str, port: int, admin_port: int, settings: EmulatorSettings) -> int:
    """The emulator alone until SIGTERM/SIGINT."""
    configure_logging("info", "json")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runners = await _start_emulator(host, port, admin_port, settings)
        await stop.wait()
        for runner in runners:
            await runner.cleanup()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return 0


@dataclass(frozen=True)
class DemoWebhooks:
    """The demo's webhook loop: the app's port, the webhook secret, the store file."""

    app_port: int
    secret: str
    store: str


@dataclass(frozen=True)
class DemoPorts:
    """The proxy's, the emulator's and the printing app's port (0: any free one)."""

    proxy: int
    emulator: int
    app: int = 0


@contextmanager
def demo_folder() -> Iterator[Path]:
    """A temporary folder for the demo's config and store, removed however the demo
    ends: Ctrl-C, SIGTERM (also one that comes before the proxy handles it), a port it
    cannot have, or an error."""
    folder = Path(tempfile.mkdtemp(prefix="vipps-proxy-demo-"))
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield folder
    finally:
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(folder, ignore_errors=True)


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(128 + signal.SIGTERM)


def demo_config(folder: Path, ports: DemoPorts, log_format: str) -> tuple[Config, DemoWebhooks]:
    """The demo's config, copied into ``folder`` and loaded from there with the DEMO_*
    variables set in this process's environment: a reload reads the same file and
    values, and what the watch checks exists."""
    hooks = DemoWebhooks(
        app_port=ports.app or free_port(),
        secret=secrets.token_urlsafe(32),
        store=str(folder / "webhooks.sqlite3"),
    )
    os.environ.update(
        DEMO_PORT=str(ports.proxy),
        DEMO_LOG_FORMAT=log_format,
        DEMO_EMULATOR_URL=f"http://127.0.0.1:{ports.emulator}",
        DEMO_APP_URL=f"http://127.0.0.1:{hooks.app_port}",
        DEMO_WEBHOOK_SECRET=hooks.secret,
        DEMO_STORE=hooks.store,
    )
    path = folder / "demo.toml"
    path.write_text(resources.files("proxy").joinpath("demo.toml").read_text(encoding="utf-8"))
    return load_config(path), hooks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _print_event(request: web.Request) -> web.Response:
    """The demo's legacy app: prints each webhook the proxy delivers, then says 200."""
    try:
        event = orjson.loads(await request.read())
        what = f"{event.get('name')} for payment {event.get('reference')}"
    except (orjson.JSONDecodeError, AttributeError):
        what = "an event"
    attempt = request.headers.get("Vipps-Proxy-Attempt", "?")
    print(f"demo app received {what} (attempt {attempt})", flush=True)
    return web.Response(status=200)


async def _start_demo_webhooks(
    emulator: web.Application, hooks: DemoWebhooks, config: Config
) -> web.AppRunner:
    """The printing app, and the proxy's webhook URL registered at the emulator."""
    app = web.Application()
    app.router.add_post("/vipps/events", _print_event)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", hooks.app_port)
    await listen(site, "--app-port", "127.0.0.1", hooks.app_port, "--app-port")
    msn = next(iter(config.credentials.values())).merchant_serial_number
    registration = Registration(
        str(uuid.uuid4()),
        msn,
        f"http://127.0.0.1:{config.server.port}{config.webhooks[0].path}",
        EVENT_TYPES,
        Secret(hooks.secret),
    )
    webhook_hub(emulator).registrations[registration.id] = registration
    return runner


def run_demo(
    config: Config,
    emulator_port: int,
    auto_approve: float,
    curl: str,
    hooks: DemoWebhooks | None = None,
) -> int:
    """The emulator on ``emulator_port`` and the proxy in front of it, until Ctrl-C;
    the emulator approves each payment ``auto_approve`` seconds after its creation; with
    ``hooks``, the emulator's webhooks go through the proxy to a printing app."""
    redactor = Redactor(config.secrets)
    configure_logging(config.log.level, config.log.format, redactor)

    async def main() -> None:
        settings = EmulatorSettings(auto_approve=auto_approve)
        runners = await _start_emulator(
            "127.0.0.1", emulator_port, 0, settings, port_flag="--emulator-port"
        )
        if hooks is not None and config.webhooks:
            emulator = runners[0].app
            assert isinstance(emulator, web.Application)
            runners.append(await _start_demo_webhooks(emulator, hooks, config))

        async def announce(_: web.BaseRunner) -> None:
            port = config.server.port
            print(
                f"\nvipps-proxy demo: proxy on http://127.0.0.1:{port}, emulator on "
                f"http://127.0.0.1:{emulator_port}. Create a payment through the proxy:\n"
            )
            print(curl, flush=True)
            if hooks is not None:
                print(
                    f"\nThe emulator's webhooks go through the proxy to a demo app on "
                    f"http://127.0.0.1:{hooks.app_port}, which prints each one.",
                    flush=True,
                )
            print("\nCtrl-C stops the demo.\n", flush=True)

        try:
            await serve(config, redactor, ready=announce, port_key="--port")
        finally:
            for runner in runners:
                await runner.cleanup()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return 0
