"""Vipps' webhook signature (Webhooks API, "Request authentication"), checked exactly.

Vipps sends ``x-ms-date``, ``x-ms-content-sha256`` (base64 of the body's SHA-256) and
``Authorization: HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&
Signature=<base64 HMAC-SHA256>`` over the string
``POST\\n{path and query}\\n{x-ms-date};{host};{content hash}``, keyed with the secret's
UTF-8 bytes (not base64-decoded). Every comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

from multidict import CIMultiDictProxy
from yarl import URL

from proxy.secret import Secret

SCHEME: Final = "HMAC-SHA256"
SIGNED_HEADERS: Final = "x-ms-date;host;x-ms-content-sha256"
DATE: Final = "x-ms-date"
CONTENT_HASH: Final = "x-ms-content-sha256"


class SignatureError(Exception):
    """Why a webhook was refused; ``reason`` names it for logs and metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def content_hash(body: bytes) -> str:
    """``x-ms-content-sha256``: base64 of the body's SHA-256."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def string_to_sign(method: str, path_and_query: str, date: str, host: str, digest: str) -> str:
    return f"{method}\n{path_and_query}\n{date};{host};{digest}"


def signature(secret: Secret, text: str) -> str:
    """base64(HMAC-SHA256(secret as UTF-8, text))."""
    mac = hmac.new(secret.reveal().encode("utf-8"), text.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def authorization(secret: Secret, text: str) -> str:
    """The ``Authorization`` value Vipps sends for ``text`` (the emulator signs with it)."""
    return f"{SCHEME} SignedHeaders={SIGNED_HEADERS}&Signature={signature(secret, text)}"


def sign_headers(
    secret: Secret, url: URL, body: bytes, date: str, method: str = "POST"
) -> dict[str, str]:
    """The three headers Vipps adds to a webhook to ``url`` (Host comes from the URL)."""
    digest = content_hash(body)
    host = _authority(url)
    text = string_to_sign(method, url.raw_path_qs, date, host, digest)
    return {DATE: date, CONTENT_HASH: digest, "Authorization": authorization(secret, text)}


def signed_target(public_url: URL | None, host: str, raw_path_qs: str) -> tuple[str, str]:
    """The host and the path-and-query Vipps signed.

    Behind a load balancer Vipps called ``public_url``, not us: its host, and its path
    with the query this request carries (the query is the caller's, never configured).
    """
    if public_url is None:
        return host, raw_path_qs
    query = raw_path_qs.partition("?")[2]
    path = public_url.raw_path or "/"
    return _authority(public_url), f"{path}?{query}" if query else path


def verify(
    secrets: Secret | Sequence[Secret],
    headers: CIMultiDictProxy[str],
    body: bytes,
    *,
    method: str,
    host: str,
    path_and_query: str,
    max_age: float,
    now: float,
) -> None:
    """Raise ``SignatureError`` unless the webhook is Vipps', unaltered and fresh.

    During a rotation ``secrets`` holds several; any one of them verifies. Each is
    tried (no early exit), so the time taken does not say which matched."""
    date = _single(headers, DATE)
    digest = _single(headers, CONTENT_HASH)
    given = _given_signature(_single(headers, "Authorization"))
    if not hmac.compare_digest(digest.encode(), content_hash(body).encode()):
        raise SignatureError("hash_mismatch", "x-ms-content-sha256 does not match the body")
    text = string_to_sign(method, path_and_query, date, host, digest)
    keys = (secrets,) if isinstance(secrets, Secret) else tuple(secrets)
    matched = False
    for secret in keys:
        matched |= hmac.compare_digest(given.encode(), signature(secret, text).encode())
    if not matched:
        raise SignatureError("bad_signature", "the signature does not match")
    _check_date(date, max_age, now)


def _single(headers: CIMultiDictProxy[str], name: str) -> str:
    values = headers.getall(name, [])
    if len(values) != 1 or not values[0].isascii():
        raise SignatureError("missing_signature", f"exactly one {name} header is required")
    return str(values[0])


def _given_signature(value: str) -> str:
    """The signature from ``HMAC-SHA256 SignedHeaders=...&Signature=...``, exactly that
    shape: no other, repeated or empty parameters."""
    scheme, _, params = value.strip().partition(" ")
    pairs = [part.partition("=") for part in params.strip().split("&")]
    fields = {name: given for name, sep, given in pairs if sep}
    if (
        scheme != SCHEME
        or [name for name, _, _ in pairs] != ["SignedHeaders", "Signature"]
        or fields.get("SignedHeaders") != SIGNED_HEADERS
    ):
        raise SignatureError("missing_signature", f"Authorization is not {SCHEME} as Vipps signs")
    return fields.get("Signature", "")


def _check_date(date: str, max_age: float, now: float) -> None:
    try:
        parsed = parsedate_to_datetime(date)
        if parsed.tzinfo is None:  # "-0000": UTC by RFC 5322
            parsed = parsed.replace(tzinfo=UTC)
        when = parsed.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        raise SignatureError("bad_date", "x-ms-date is not an HTTP date") from None
    if abs(now - when) > max_age:
        raise SignatureError("stale_date", "x-ms-date is outside max_age")


def _authority(url: URL) -> str:
    """``host`` or ``host:port`` for a non-default port, as a Host header gives it."""
    host = url.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    return host if url.explicit_port is None else f"{host}:{url.port}"
