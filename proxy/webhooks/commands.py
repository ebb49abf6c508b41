"""``vipps-proxy webhooks list | retry | register``: the store and Vipps' Webhooks API
from the command line.

``list`` and ``retry`` work on the store file while the proxy runs (SQLite shares it);
a retried event is picked up by the running deliverer within a second. ``list`` is safe
on a terminal: every field has its control characters escaped (a sender chose the
``reference``), it says how many events it left out, and ``--json`` gives one object
per line for scripts. ``retry`` says when later events of the same payment were already
delivered: the retried one reaches the app after them. ``register``
calls ``POST /webhooks/v1/webhooks`` with a credential set's token and writes the
returned secret to a file with mode 0600, first, above the secrets it already held (a
rotation's overlap); the secret is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import unicodedata
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
from proxy.tokenfetch import TokenFetchError
from proxy.tokens import TokenProvider
from proxy.webhooks.deliver import RECEIVED_AT, received_at
from proxy.webhooks.store import STATES, Event, Store

WEBHOOKS_API: Final = "/webhooks/v1/webhooks"
EXIT_FAILED: Final = 1
LIST_LIMIT: Final = 1000  # rows `webhooks list` shows unless --limit or --all
MAX_LIMIT: Final = 2**63 - 1  # SQLite's largest integer: a larger --limit means the same
#: Unicode categories escaped on output: controls, format (bidi), line/paragraph
#: separators, surrogates, unassigned.
_UNSAFE: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})


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
    size = listing.add_mutually_exclusive_group()
    size.add_argument(
        "--limit", type=_positive, default=LIST_LIMIT, help=f"at most N (default {LIST_LIMIT})"
    )
    size.add_argument("--all", action="store_true", help="every stored event")
    listing.add_argument("--json", action="store_true", help="one JSON object per event")
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
            return _list(store, args)
        which = None if args.failed else args.id
        overtaken = store.overtaken(which)
        count = store.requeue(which, time.time())
    finally:
        store.close()
    print(f"{count} event(s) queued for delivery")
    if overtaken:
        print(
            f"note: {overtaken} of them had later events of the same payment already "
            f"delivered; each reaches the app after those (see {RECEIVED_AT})"
        )
    return 0 if count or args.failed else EXIT_FAILED


def _list(store: Store, args: argparse.Namespace) -> int:
    limit = None if args.all else args.limit
    shown = store.events(args.state, limit)
    for event in shown:
        print(as_json(event) if args.json else describe(event))
    if limit is not None and len(shown) == limit:
        left_out = store.count(args.state) - len(shown)
        if left_out > 0:  # on stderr: --json's stdout stays one object per line
            print(f"{left_out} more event(s) not shown; use --limit N or --all", file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return min(value, MAX_LIMIT)


def describe(event: Event) -> str:
    """One line per event: what an operator needs to judge it, never its body; every
    field with its control characters escaped."""
    fields = [
        event.id,
        event.state,
        f"attempts={event.attempts}",
        f"created={_utc(event.created_at)}",
        f"path={event.hook}",
        f"reference={event.ordering_key or '-'}",
    ]
    if event.last_error:
        fields.append(f"last_error={event.last_error}")
    return "  ".join(escape(field) for field in fields)


def as_json(event: Event) -> str:
    """One event as one JSON line (ASCII only, so no byte of it steers a terminal)."""
    doc = {
        "id": event.id,
        "state": event.state,
        "attempts": event.attempts,
        "created": _utc(event.created_at),
        "received_at": received_at(event.received_at),
        "next_attempt_at": _utc(event.next_attempt_at) if event.state == "pending" else None,
        "path": event.hook,
        "reference": event.ordering_key or None,
        "last_error": event.last_error or None,
    }
    return json.dumps(doc, ensure_ascii=True).replace("\x7f", "\\u007f")  # JSON keeps DEL


def escape(text: str) -> str:
    """``text`` with every control or format character (C0, DEL, C1, bidi overrides,
    line separators) and the backslash written as escapes: printable as one line."""
    return "".join(_escaped(c) for c in text)


def _escaped(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if unicodedata.category(char) in _UNSAFE:
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def _utc(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    headers = {"Authorization": f"Bearer {token.reveal()}"}
    if creds.subscription_key:  # an oauth2 set may have none
        headers[SUBSCRIPTION_KEY] = creds.subscription_key.reveal()
    if creds.merchant_serial_number:
        headers[MERCHANT_SERIAL_NUMBER] = creds.merchant_serial_number
    return headers


def _open_secret_file(path: Path) -> tuple[int, bool]:
    """The secret's file, owner-only, never through a symlink (the secret would land
    where the link points), kept as it is until the new secret is written; and whether
    it was made just now."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd, created = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        fd, created = os.open(path, flags), False
    os.fchmod(fd, 0o600)
    return fd, created


def write_secret(fd: int, secret: str) -> None:
    """The new secret first, then the ones the file held: the proxy (``secret_file``,
    one per line) verifies with each, so Vipps' old registration keeps working until
    it is deleted (then take its secret out of the file)."""
    held = bytearray()
    while chunk := os.pread(fd, 65536, len(held)):
        held += chunk
    held = held.removeprefix(b"\xef\xbb\xbf")  # an editor's byte-order mark: not mid-file
    kept = [line for line in bytes(held).splitlines() if line.strip()]
    lines = [secret.encode("utf-8"), *(k for k in kept if k.strip() != secret.encode())]
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"".join(line + b"\n" for line in lines), 0)
