"""Serving an emulator and its admin app on two ports, for the CLI and the demo."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from yarl import URL

from .admin import create_admin_app
from .app import create_emulator
from .keys import emulator_state
from .settings import DEFAULT_SETTINGS, EmulatorSettings
from .state import EmulatorState


@dataclass(frozen=True)
class RunningEmulator:
    """Where a served emulator listens, and its state."""

    url: URL
    admin_url: URL
    state: EmulatorState


@asynccontextmanager
async def serve_emulator(
    settings: EmulatorSettings = DEFAULT_SETTINGS,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    admin_port: int = 0,
) -> AsyncIterator[RunningEmulator]:
    """Serve the emulator on ``port`` and its admin app on ``admin_port`` (0: any free)."""
    app = create_emulator(settings)
    state = emulator_state(app)
    async with (
        _serving(app, host, port) as url,
        _serving(create_admin_app(state), host, admin_port) as admin_url,
    ):
        yield RunningEmulator(url, admin_url, state)


@asynccontextmanager
async def _serving(app: web.Application, host: str, port: int) -> AsyncIterator[URL]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield URL.build(scheme="http", host=bound_host, port=bound_port)
    finally:
        await runner.cleanup()
