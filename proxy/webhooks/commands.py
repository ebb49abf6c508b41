"""``vipps-proxy webhooks list | retry | register``: the store and Vipps' Webhooks API
from the command line.

``list`` and ``retry`` work on the store file while the proxy runs (SQLite shares it);
a retried event is picked up by the running deliverer within a second. ``register``
calls ``POST /webhooks/v1/webhooks`` with a credential set's token and writes the
returned secret to a file with mode 0600; the secret is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
from yarl import URL

from proxy.config import Config, Credentials
from proxy.headers import MERCHANT_SERIAL_NUMBER, SUBSCRIPTION_KEY
from proxy.metrics import Metrics
from proxy.redact import Redactor
from proxy.secret import Secret
from proxy.tls import outbound_context
from proxy.tokens import TokenFetchError, TokenProvider
from proxy.webhooks.store import STATES, Event, Store

WEBHOOKS_API: Final = "/webhooks/v1/webhooks"
EXIT_FAILED: Final = 1


WEBHOOKS_TEXT: Final = (
    "The webhook store and Vipps' Webhooks API: list the events received, deliver them "
    "again, register a webhook. list and retry work beside a running proxy."
)
LIST_TEXT: Final = (
    "The events in the store, oldest first, one line each: id, state, attempts, when it "
    "came, its path and payment reference, the last delivery error. Never the body."
)
RETRY_TEXT: Final = (
    "Deliver a stored event (by id), or every failed one, again: the running proxy picks "
    "it up within a second and tries for retry_for seconds more."
)
REGISTER_TEXT: Final = (
    "Register a webhook with Vipps (POST /webhooks/v1/webhooks) with a credential set's "
    "token, and write the secret Vipps returns to --secret-file (mode 0600). The secret "
    "is shown once by Vipps and never printed."
)


def add_parser(sub: Any, config_help: str) -> None:
    """The ``webhooks`` sub-command and its own three; ``config_help`` for --config."""
    hooks = sub.add_parser(
        "webhooks", help="inspect, retry and register webhooks", description=WEBHOOKS_TEXT
    )
    hooks.add_argument("--config", dest="config", default=argparse.SUPPRESS, help=config_help)
    actions = hooks.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="stored events, oldest first", description=LIST_TEXT)
    listing.add_argument("--config", dest="config", default=argparse.SUPPRESS, help=config_help)
    listing.add_argument("--state", choices=STATES, help="only the events in this state")
    retry = actions.add_parser(
        "retry", help="deliver an event (or every failed one) again", description=RETRY_TEXT
    )
    retry.add_argument("--config", dest="config", default=argparse.SUPPRESS, help=config_help)
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="an event id from `webhooks list`")
    which.add_argument("--failed", action="store_true", help="every failed event")
    register = actions.add_parser(
        "register", help="register a webhook with Vipps", description=REGISTER_TEXT
    )
    register.add_argument("--config", dest="config", default=argparse.SUPPRESS, help=config_help)
    register.add_argument("--credentials", required=True, help="the credential set to use")
    register.add_argument("--url", required=True, help="the public URL Vipps will call")
    register.add_argument(
        "--events", nargs="+", required=True, help="event types, e.g. epayments.payment.captured.v1"
    )
    register.add_argument("--secret-file", required=True, help="where the secret goes (0600)")


def run(config: Config, args: argparse.Namespace) -> int:
    if args.action == "register":
        return asyncio.run(_register(config, args))
    store = Store(config.store.path)
    try:
        if args.action == "list":
            for event in store.events(args.state):
                print(describe(event))
            return 0
        count = store.requeue(None if args.failed else args.id, time.time())
    finally:
        store.close()
    print(f"{count} event(s) queued for delivery")
    return 0 if count or args.failed else EXIT_FAILED


def describe(event: Event) -> str:
    """One line per event: what an operator needs to judge it, never its body."""
    created = datetime.fromtimestamp(event.created_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = [
        event.id,
        event.state,
        f"attempts={event.attempts}",
        f"created={created}",
        f"path={event.hook}",
        f"reference={event.ordering_key or '-'}",
    ]
    if event.last_error:
        fields.append(f"last_error={event.last_error}")
    return "  ".join(fields)


async def _register(config: Config, args: argparse.Namespace) -> int:
    creds = config.credentials.get(args.credentials)
    if creds is None:
        print(f"vipps-proxy: no credential set {args.credentials!r}", file=sys.stderr)
        return EXIT_FAILED
    # Opened before Vipps is asked: the secret is shown once, so where it goes must work.
    path = Path(args.secret_file)
    try:
        fd, created = _open_secret_file(path)
    except OSError as exc:
        why = exc.strerror or exc.__class__.__name__
        print(f"vipps-proxy: --secret-file: cannot write {path}: {why}", file=sys.stderr)
        return EXIT_FAILED
    status = EXIT_FAILED
    try:
        status = await _register_with(config, creds, args, fd)
    finally:
        os.close(fd)
        if status != 0 and created:
            os.unlink(path)  # nothing was registered: leave no empty file
    return status


async def _register_with(
    config: Config, creds: Credentials, args: argparse.Namespace, fd: int
) -> int:
    ssl_context = outbound_context(config.tls)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        tokens = TokenProvider(creds, session, Metrics(), Redactor(config.secrets), ssl=ssl_context)
        try:
            token, _ = await tokens.get()
        except TokenFetchError as exc:
            print(f"vipps-proxy: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            await tokens.close()
        url = _api_url(config, creds)
        try:
            async with session.post(
                url,
                json={"url": args.url, "events": args.events},
                headers=_headers(creds, token.value),
                ssl=ssl_context,
                timeout=aiohttp.ClientTimeout(total=30),
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            where = url.with_query(None)
            print(f"vipps-proxy: cannot call {where}: {exc.__class__.__name__}", file=sys.stderr)
            return EXIT_FAILED
    if response.status not in (200, 201):
        print(f"vipps-proxy: Vipps answered {response.status}", file=sys.stderr)
        return EXIT_FAILED
    try:
        answer = orjson.loads(body)
        secret, webhook_id = str(answer["secret"]), answer["id"]
    except (orjson.JSONDecodeError, TypeError, KeyError):
        print("vipps-proxy: Vipps' answer has no webhook id and secret", file=sys.stderr)
        return EXIT_FAILED
    write_secret(fd, secret)
    print(f"registered webhook {webhook_id}; secret written to {args.secret_file}")
    return 0


def _api_url(config: Config, creds: Credentials) -> URL:
    """The Webhooks API where the config's routes send it, else at the token's host."""
    covering = [r for r in config.routes if WEBHOOKS_API.startswith(r.prefix)]
    if covering:
        route = max(covering, key=lambda r: len(r.prefix))
        return URL(str(route.upstream).rstrip("/") + WEBHOOKS_API)
    return creds.token_url.origin().with_path(WEBHOOKS_API)


def _headers(creds: Credentials, token: Secret) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {token.reveal()}",
        SUBSCRIPTION_KEY: creds.subscription_key.reveal(),
    }
    if creds.merchant_serial_number:
        headers[MERCHANT_SERIAL_NUMBER] = creds.merchant_serial_number
    return headers


def _open_secret_file(path: Path) -> tuple[int, bool]:
    """The secret's file, owner-only, never through a symlink (the secret would land
    where the link points), kept as it is until the new secret is written; and whether
    it was made just now."""
    flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        fd, created = os.open(path, flags), False
    os.fchmod(fd, 0o600)
    return fd, created


def write_secret(fd: int, secret: str) -> None:
    """The secret in place of what the file held."""
    os.ftruncate(fd, 0)
    os.write(fd, secret.encode("utf-8") + b"\n")
