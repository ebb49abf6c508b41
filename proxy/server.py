"""Running the app: one process or ``workers`` processes sharing the port, and shutdown.

SIGTERM or SIGINT: stop accepting, give in-flight calls ``shutdown_timeout`` seconds,
cut what is left (each cut call still writes its log line), exit 0. SIGHUP: reload the
config (``proxy.reload``). With ``workers > 1``
the parent starts N workers that bind the same port with SO_REUSEPORT (each with its own
token cache: Vipps allows several valid tokens at once) and passes signals on to them;
each worker reloads on its own. A worker whose parent is gone (killed with SIGKILL, or by
the OOM killer) drains and exits as on SIGTERM: nothing else would stop it, and it would
go on holding the port and delivering webhooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web

from proxy import events
from proxy.admin import serve_admin
from proxy.aiohttp_seam import HandshakeBoundSite
from proxy.app import ProxyApp
from proxy.config import Config
from proxy.groupmetrics import MetricsGroup, metrics_folder, share
from proxy.logs import configure_logging
from proxy.redact import Redactor
from proxy.runner import ProxyRunner
from proxy.startup import EXIT_STARTUP, StartupError, listen, listen_error
from proxy.tls import inbound_context

_log = structlog.get_logger("proxy.server")

try:  # uvloop where available: a faster event loop, same semantics
    import uvloop

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # pragma: no cover - Windows
    loop_factory = None


def run(config: Config) -> int:
    """Serve until SIGTERM/SIGINT; the process's exit status."""
    if config.server.workers > 1:
        return _run_workers(config)
    return _serve_process(config, reuse_port=False)


class _EarlySignals:
    """A SIGHUP or SIGTERM that came before the proxy could act on it (while it was
    starting): noted, and acted on once serving, so that a reload or a stop asked for
    during start-up is not lost, and a worker still starting is not killed by it."""

    hangup = False
    stop = False

    @classmethod
    def catch(cls) -> None:
        signal.signal(signal.SIGHUP, cls._note)
        signal.signal(signal.SIGTERM, cls._note)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _EARLY)  # see _start_workers

    @classmethod
    def _note(cls, signum: int, _frame: Any) -> None:
        if signum == signal.SIGHUP:
            cls.hangup = True
        else:
            cls.stop = True


#: Blocked in the parent while workers start (and so in them, until each can take them).
_EARLY: Final = {signal.SIGHUP, signal.SIGTERM}


def _serve_process(config: Config, *, reuse_port: bool, metrics: Path | None = None) -> int:
    _EarlySignals.catch()
    redactor = Redactor(config.secrets)
    configure_logging(config.log.level, config.log.format, redactor)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(config, redactor, reuse_port=reuse_port, metrics=metrics))
    return 0


async def serve(
    config: Config,
    redactor: Redactor,
    *,
    reuse_port: bool = False,
    ready: Callable[[web.BaseRunner], Awaitable[None]] | None = None,
    port_key: str = "server.port",
    metrics: Path | None = None,
) -> None:
    """Serve ``config`` until a stop signal, then drain. ``ready`` runs once listening.

    ``metrics``: the run's metrics folder when this is one of several workers.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if _EarlySignals.stop:
        stop.set()  # asked to stop while starting: start, then drain at once
    runner = await start(config, redactor, reuse_port=reuse_port, port_key=port_key)
    loop.add_signal_handler(signal.SIGHUP, runner.reloader.request)
    if _EarlySignals.hangup:
        runner.reloader.request()
    own = runner.proxy.state.metrics
    sharing: asyncio.Task[None] | None = None
    if metrics is not None:  # scrapes show the group; this worker's part goes to the folder
        own.group = MetricsGroup(metrics)
        sharing = asyncio.create_task(share(own.group, own.families))
    if ready is not None:
        await ready(runner)
    await stop.wait()
    _log.info(events.SHUTDOWN_STARTED, shutdown_timeout_s=config.server.shutdown_timeout)
    await runner.cleanup()
    if sharing is not None and own.group is not None:
        sharing.cancel()
        own.group.write(own.families())  # the calls drained at shutdown count too
    _log.info(events.SHUTDOWN)


async def start(
    config: Config, redactor: Redactor, *, reuse_port: bool = False, port_key: str = "server.port"
) -> ProxyRunner:
    """Start listening; the caller calls ``runner.cleanup()`` to drain and stop.

    A port that cannot be listened on, or a certificate that cannot be loaded, raises
    `StartupError` naming ``port_key`` or the certificate's key, with nothing left open.
    """
    server = config.server
    ssl_context = inbound_context(server)
    proxy = ProxyApp(config, redactor)
    proxy.inbound_tls = ssl_context  # a reload loads a renewed certificate into it
    runner = ProxyRunner(
        proxy,
        access_log=None,
        shutdown_timeout=server.shutdown_timeout,
        # aiohttp closes a connection whose next request is not complete within the
        # keep-alive timeout, so this one setting bounds both idle connections and
        # slow-header (slowloris) clients.
        keepalive_timeout=server.header_timeout,
        max_line_size=8190,
        max_field_size=8190,
        max_headers=100,
    )
    await runner.setup()
    site = HandshakeBoundSite(
        runner,
        server.host,
        server.port,
        ssl_context=ssl_context,
        reuse_port=reuse_port or None,
        backlog=1024,
        handshake_timeout=server.header_timeout,
    )
    try:
        await listen(site, port_key, server.host, server.port, "server.host")
        if server.admin_port:
            runner.admin = await serve_admin(lambda: proxy.state, server, reuse_port=reuse_port)
    except StartupError:
        await runner.cleanup()
        raise
    runner.proxy.prefetch()
    _log.info(
        events.STARTUP,
        listening=site.name,
        admin=next(iter(runner.admin.sites)).name if runner.admin else None,
        pid=os.getpid(),
        routes=[f"{r.prefix} -> {r.upstream} ({r.auth})" for r in config.routes],
        credential_sets=sorted(config.credentials),
        workers=server.workers,
    )
    if not config.tls.verify:
        _log.warning(events.TLS_VERIFY_DISABLED, scope="all outbound connections")
    return runner


def _run_workers(config: Config) -> int:
    """Start N worker processes on one port; forward stop signals; wait for all."""
    configure_logging(config.log.level, config.log.format, Redactor(config.secrets))
    _preflight(config)
    with metrics_folder() as folder:
        return _start_workers(config, folder)


def _start_workers(config: Config, metrics: Path) -> int:
    context = multiprocessing.get_context("spawn")
    # Blocked while workers start, and so in them (the mask is inherited) until each can
    # take them: a SIGHUP or SIGTERM to a worker still starting would otherwise end it.
    # multiprocessing unblocks SIGTERM when it starts its resource tracker, so that is
    # started first.
    resource_tracker.ensure_running()
    signal.pthread_sigmask(signal.SIG_BLOCK, _EARLY)
    # Each worker holds the reading end; the writing end is only ever here, so when this
    # process ends, however it ends, every worker reads end-of-file.
    alive, parent_end = context.Pipe(duplex=False)
    workers = [
        context.Process(
            target=_worker_main, args=(config, metrics, alive), name=f"vipps-proxy-worker-{i}"
        )
        for i in range(config.server.workers)
    ]

    def forward(_signum: int, _frame: Any) -> None:
        for worker in workers:  # workers ignore SIGINT; SIGTERM is what drains them
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    def reload(_signum: int, _frame: Any) -> None:
        for worker in workers:  # each worker reloads on its own
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, reload)
    for worker in workers:
        worker.start()
    alive.close()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _EARLY)
    status = 0
    for worker in workers:
        worker.join()
        if worker.exitcode:
            _log.error(events.WORKER_EXITED, worker=worker.name, exitcode=worker.exitcode)
            status = 1
    parent_end.close()  # held open until here, on purpose: its closing is what workers watch
    return status


def _preflight(config: Config) -> None:
    """What every worker would fail on, found once by the parent: certificate, ports."""
    server = config.server
    inbound_context(server)
    listeners = [("server.port", server.host, server.port, "server.host")]
    if server.admin_port:
        listeners.append(
            ("server.admin_port", server.admin_host, server.admin_port, "server.admin_host")
        )

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        for key, host, port, host_key in listeners:
            try:
                listener = await loop.create_server(asyncio.Protocol, host, port, reuse_port=True)
            except OSError as exc:
                raise listen_error(key, host, port, exc, host_key) from None
            listener.close()
            await listener.wait_closed()

    asyncio.run(probe())


def _worker_main(config: Config, metrics: Path, parent_alive: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM drains
    threading.Thread(
        target=_stop_when_parent_gone, args=(parent_alive,), name="parent-watch", daemon=True
    ).start()
    try:
        status = _serve_process(config, reuse_port=True, metrics=metrics)
    except StartupError as exc:
        print(f"vipps-proxy: {exc}", file=sys.stderr, flush=True)
        status = EXIT_STARTUP
    sys.exit(status)


def _stop_when_parent_gone(parent_alive: Connection) -> None:
    """Wait for the parent's end of the pipe to close, then SIGTERM this worker."""
    with contextlib.suppress(EOFError, OSError):
        parent_alive.recv_bytes()  # the parent never writes: this returns only at its end
    _log.warning(events.WORKER_PARENT_GONE, pid=os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)
