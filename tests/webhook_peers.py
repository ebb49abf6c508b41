"""The peers of a webhook relay in tests: Vipps' signer and the legacy app.

The signer is written here from Vipps' documentation, independently of
``proxy.webhooks.verify`` (whose own test pins it to Vipps' published test vector).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from proxy.webhooks.store import Event, Store

SECRET = "test-webhook-secret-0123456789abcdef"
HOOK = "/webhooks/vipps"
ECOM = "/ecom"


def vipps_headers(
    body: bytes,
    host: str,
    path_and_query: str,
    *,
    secret: str = SECRET,
    date: str | None = None,
) -> dict[str, str]:
    """The headers Vipps sends with a webhook, as its documentation describes them."""
    date = date or formatdate(time.time(), usegmt=True)
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    text = f"POST\n{path_and_query}\n{date};{host};{digest}"
    mac = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    signature = base64.b64encode(mac).decode()
    return {
        "Content-Type": "application/json",
        "x-ms-date": date,
        "x-ms-content-sha256": digest,
        "Authorization": (
            f"HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={signature}"
        ),
    }


def payment_event(reference: str, name: str = "AUTHORIZED", n: int = 0) -> bytes:
    """An ePayment webhook body, as Vipps sends it."""
    return orjson.dumps(
        {
            "msn": "123456",
            "reference": reference,
            "pspReference": f"psp-{reference}-{n}",
            "name": name,
            "amount": {"currency": "NOK", "value": 4900},
            "timestamp": "2026-11-30T00:00:00.000Z",
            "idempotencyKey": None,
            "success": True,
        }
    )


@dataclass
class Received:
    method: str
    path_qs: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next(v for k, v in self.headers if k.lower() == name.lower())

    @property
    def reference(self) -> str:
        return str(orjson.loads(self.body).get("reference", ""))


@dataclass
class LegacyApp:
    """A small aiohttp app that records what reaches it; references in ``failing``
    get 500."""

    received: list[Received] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)
    answer: dict[str, Any] = field(default_factory=lambda: {"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        got = Received(
            request.method,
            request.path_qs,
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
            body,
        )
        self.received.append(got)
        try:  # Vipps' own printed examples are not all JSON (a // comment)
            reference = orjson.loads(body).get("reference", "") if body.startswith(b"{") else ""
        except orjson.JSONDecodeError:
            reference = ""
        if reference in self.failing:
            return web.Response(status=500, text="not now")
        return web.json_response(self.answer)

    def bodies(self) -> list[bytes]:
        return [r.body for r in self.received]


def webhooks_table(deliver_to: str, **extra: Any) -> dict[str, Any]:
    return {
        "path": HOOK,
        "kind": "vipps-webhook",
        "secret": SECRET,
        "deliver_to": deliver_to,
        **extra,
    }


def stored(path: str | Path, state: str | None = None) -> list[Event]:
    store = Store(path)
    try:
        return store.events(state)  # type: ignore[arg-type]
    finally:
        store.close()


async def eventually(check: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    """Poll ``check`` until true; bounded in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
