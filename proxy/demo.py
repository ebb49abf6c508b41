"""``vipps-proxy demo`` and ``vipps-proxy emulator``: the emulator, alone or behind us."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from proxy import events
from proxy.config import Config
from proxy.emulator import EmulatorSettings, create_admin_app, create_emulator, emulator_state
from proxy.logs import configure_logging
from proxy.redact import Redactor
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


def run_demo(config: Config, emulator_port: int, auto_approve: float, curl: str) -> int:
    """The emulator on ``emulator_port`` and the proxy in front of it, until Ctrl-C;
    the emulator approves each payment ``auto_approve`` seconds after its creation."""
    redactor = Redactor(config.secrets)
    configure_logging(config.log.level, config.log.format, redactor)

    async def main() -> None:
        settings = EmulatorSettings(auto_approve=auto_approve)
        runners = await _start_emulator(
            "127.0.0.1", emulator_port, 0, settings, port_flag="--emulator-port"
        )

        async def announce(_: web.BaseRunner) -> None:
            port = config.server.port
            print(
                f"\nvipps-proxy demo: proxy on http://127.0.0.1:{port}, emulator on "
                f"http://127.0.0.1:{emulator_port}. Create a payment through the proxy:\n"
            )
            print(curl, flush=True)
            print("\nCtrl-C stops the demo.\n", flush=True)

        try:
            await serve(config, redactor, ready=announce, port_key="--port")
        finally:
            for runner in runners:
                await runner.cleanup()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return 0
