"""``vipps-proxy check [--online]``: what the config says, and whether it can work.

Offline, beyond what loading the config already refuses: the webhook store's folder
must be writable (a ``ConfigError`` naming ``store.path``), and each route with several
credential sets says what a call without ``Merchant-Serial-Number`` gets.

``--online`` then tries what the config names, calling no API: a token fetched for each
credential set, and each upstream and ``deliver_to`` resolved and connected to, TLS
verified as the proxy verifies it. One line per check, never a secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp
from yarl import URL

from proxy.config import Config, ConfigError, Credentials
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.tls import outbound_context
from proxy.tokenfetch import TokenFetchError
from proxy.tokens import TokenProvider

CONNECT_TIMEOUT: Final = 10.0  # seconds for a look-up, a connect and a TLS handshake


def check_store(config: Config) -> None:
    """A ``ConfigError`` naming ``store.path`` if the store (used with webhooks) cannot be
    created or written where the config puts it."""
    if not config.webhooks:
        return
    folder = Path(config.store.path).parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError("store.path", f"{existing} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError("store.path", f"cannot write in {existing}: {exc.strerror}") from None


def msn_rules(config: Config) -> list[str]:
    """For each route with several credential sets: what a call without
    ``Merchant-Serial-Number`` gets."""
    lines = []
    for i, route in enumerate(config.routes):
        if len(route.credentials) > 1:
            gets = (
                f"credential set {route.default_credentials!r} (default_credentials)"
                if route.default_credentials
                else "400 missing_msn"
            )
            lines.append(f"routes[{i}] {route.prefix}: without Merchant-Serial-Number: {gets}")
    return lines


@dataclass(frozen=True)
class Outcome:
    """One online check: what was tried and how it went (no secret in either)."""

    what: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what}: {self.detail}"


async def online(config: Config) -> list[Outcome]:
    """Every online check, run together."""
    context = outbound_context(config.tls)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        redactor = Redactor(config.secrets)
        tokens = [_token(c, session, redactor, context) for c in config.credentials.values()]
        connects = [_connect(what, url, config, context) for what, url in _origins(config)]
        return list(await asyncio.gather(*tokens, *connects))


async def _token(
    creds: Credentials, session: aiohttp.ClientSession, redactor: Redactor, context: ssl.SSLContext
) -> Outcome:
    what = f"token credentials.{creds.name} ({creds.token_url.with_query(None)})"
    provider = TokenProvider(creds, session, Metrics(), redactor, ssl=context)
    try:
        token = await provider.fetch_once()
    except TokenFetchError as exc:
        return Outcome(what, False, redactor.redact_text(str(exc)))
    finally:
        await provider.close()
    return Outcome(what, True, f"fetched, valid {token.expires_at - token.received_at:.0f} s")


def _origins(config: Config) -> Iterator[tuple[str, URL]]:
    """Each upstream and ``deliver_to`` origin, once, named by its first key."""
    named = [(f"routes[{i}].upstream", r.upstream) for i, r in enumerate(config.routes)]
    named += [(f"webhooks[{i}].deliver_to", w.deliver_to) for i, w in enumerate(config.webhooks)]
    seen: set[URL] = set()
    for key, url in named:
        if url.origin() not in seen:
            seen.add(url.origin())
            yield key, url.origin()


async def _connect(key: str, origin: URL, config: Config, context: ssl.SSLContext) -> Outcome:
    """A look-up, a TCP connect and (https) a verified TLS handshake; nothing is sent."""
    what, host, port = f"connect {key} {origin}", origin.host or "", origin.port or 0
    tls = context if origin.scheme == "https" else None
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            address = str(infos[0][4][0])
            _, writer = await asyncio.open_connection(
                address, port, ssl=tls, server_hostname=host if tls else None
            )
    except TimeoutError:
        return Outcome(what, False, f"no answer within {CONNECT_TIMEOUT:g} s")
    except ssl.SSLCertVerificationError as exc:
        return Outcome(what, False, f"TLS certificate not accepted: {exc.verify_message}")
    except ssl.SSLError as exc:
        return Outcome(what, False, f"TLS handshake failed: {exc.reason}")
    except OSError as exc:
        return Outcome(what, False, exc.strerror or exc.__class__.__name__)
    writer.close()
    await _closed(writer)
    return Outcome(what, True, f"connected to {address} port {port}{_tls_note(tls, config)}")


async def _closed(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):  # the peer's close is its own business
        await writer.wait_closed()


def _tls_note(tls: ssl.SSLContext | None, config: Config) -> str:
    if tls is None:
        return ", plain HTTP"
    return ", TLS verified" if config.tls.verify else ", TLS NOT verified (tls.verify = false)"
