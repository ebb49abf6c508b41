"""Start-up failures as one line a person can act on: the key or flag, the address, why.

``vipps-proxy run``, ``demo`` and ``emulator`` turn a failure to listen or to load a
certificate into a `StartupError`; the command line prints it as one line on stderr and
exits with `EXIT_STARTUP`.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Callable
from typing import Final, TypeVar

from aiohttp import web

EXIT_STARTUP: Final = 1
T = TypeVar("T")


class StartupError(Exception):
    """The process cannot start; ``str()`` is one line: ``key: what is wrong``."""


def address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_error(
    key: str, host: str, port: int, exc: OSError, host_key: str | None = None
) -> StartupError:
    """Why ``host:port`` could not be listened on, naming ``key`` (``host_key`` for a
    name that does not resolve)."""
    where = address(host, port)
    if isinstance(exc, socket.gaierror):
        return StartupError(f"{host_key or key}: cannot resolve {host!r}: {exc.strerror}")
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"{key}: {where} is already in use")
    if exc.errno == errno.EACCES:
        return StartupError(f"{key}: {where}: permission denied (ports below 1024 need privileges)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"{host_key or key}: {where}: not an address of this machine")
    return StartupError(f"{key}: cannot listen on {where}: {exc.strerror or exc}")


async def listen(
    site: web.BaseSite, key: str, host: str, port: int, host_key: str | None = None
) -> None:
    """Start ``site``; a failure to listen becomes a `StartupError` naming ``key``."""
    try:
        await site.start()
    except OSError as exc:
        raise listen_error(key, host, port, exc, host_key) from None


def load_file(key: str, path: str, load: Callable[[], T]) -> T:
    """``load()`` (reading ``path``); an unreadable or invalid file names ``key``."""
    try:
        return load()
    except ssl.SSLError as exc:
        reason = exc.reason or "not valid PEM"
        raise StartupError(f"{key}: cannot load {path}: {reason}") from None
    except OSError as exc:
        raise StartupError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
