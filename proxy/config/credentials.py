"""``[credentials.NAME]``: one Vipps sales unit (or partner key): where its token comes
from, its secrets, its merchant serial number and the Vipps-System-* headers it sends.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Final, Literal, cast

from yarl import URL

from proxy.config.values import ConfigError, Table, http_url, join
from proxy.secret import Secret

TokenStyle = Literal["accesstoken", "jwt-token", "oauth2"]

TOKEN_STYLES: Final = ("accesstoken", "jwt-token", "oauth2")

# Vipps-System-* values: maxLength 30 in Vipps' specs (epayment.local.yml and
# vipps-ecom-api.yaml in tests/specs, the four Vipps-System-* header parameters).
SYSTEM_HEADER_MAX: Final = 30
_MSN = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Credentials:
    """One Vipps sales unit (or partner key): how to get its token and what to inject."""

    name: str
    token_url: URL
    token_style: TokenStyle
    client_id: Secret
    client_secret: Secret
    subscription_key: Secret | None  # optional only for oauth2 sets (/miami/v1/token)
    token_subscription_key: Secret | None = None
    merchant_serial_number: str = ""
    resource: str = ""
    system_headers: tuple[tuple[str, str], ...] = ()
    token_timeout: float = 10.0

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """Every secret value of this set, for redaction, with the forms it is sent in."""
        keys = (self.subscription_key, self.token_subscription_key)
        pair = f"{self.client_id.reveal()}:{self.client_secret.reveal()}".encode()
        basic = Secret(base64.b64encode(pair).decode("ascii"))  # oauth2's Basic header
        return (self.client_id, self.client_secret, basic, *(k for k in keys if k))


_CREDENTIAL_KEYS: Final = [
    "token_url",
    "token_style",
    "client_id",
    "client_secret",
    "subscription_key",
    "token_subscription_key",
    "merchant_serial_number",
    "resource",
    "system_name",
    "system_version",
    "plugin_name",
    "plugin_version",
    "token_timeout",
    "client_id_file",
    "client_secret_file",
    "subscription_key_file",
    "token_subscription_key_file",
]
_SYSTEM_HEADERS: Final = (
    ("system_name", "Vipps-System-Name"),
    ("system_version", "Vipps-System-Version"),
    ("plugin_name", "Vipps-System-Plugin-Name"),
    ("plugin_version", "Vipps-System-Plugin-Version"),
)


def _header_value(t: Table, name: str) -> str:
    """A value sent as a header field (RFC 9110 §5.5): no control character but tab."""
    value = t.get(name, str, "")
    if any((c < " " and c != "\t") or c == "\x7f" for c in value):
        raise ConfigError(join(t.key, name), "has a control character")
    return value


def parse_credentials(t: Table, name: str) -> Credentials:
    t.allow_only(*_CREDENTIAL_KEYS)
    style = cast(TokenStyle, t.choice("token_style", TOKEN_STYLES, "accesstoken"))
    resource = t.get("resource", str, "")
    if style == "jwt-token" and not resource:
        raise ConfigError(f"{t.key}.resource", "is required for token_style jwt-token")
    system = tuple(
        (header, _header_value(t, key)[:SYSTEM_HEADER_MAX])
        for key, header in _SYSTEM_HEADERS
        if t.get(key, str, "")
    )
    token_url = http_url(t, "token_url")
    if token_url.path in ("", "/"):
        raise ConfigError(f"{t.key}.token_url", f"has no path: {token_url}")
    return Credentials(
        name=name,
        token_url=token_url,
        token_style=style,
        client_id=_required_secret(t, "client_id"),
        client_secret=_required_secret(t, "client_secret"),
        # /miami/v1/token tokens need "no subscription key" (the Access Token spec)
        subscription_key=t.secret("subscription_key", required=style != "oauth2"),
        token_subscription_key=t.secret("token_subscription_key", required=False),
        merchant_serial_number=_merchant_serial_number(t),
        resource=resource,
        system_headers=system,
        token_timeout=t.number("token_timeout", 10.0, minimum=0.1),
    )


def _merchant_serial_number(t: Table) -> str:
    """Empty, or the digits Vipps numbers a sales unit with."""
    msn = t.get("merchant_serial_number", str, "")
    if msn and not _MSN.fullmatch(msn):
        raise ConfigError(f"{t.key}.merchant_serial_number", f"must be digits, not {msn!r}")
    return msn


def _required_secret(t: Table, name: str) -> Secret:
    value = t.secret(name)
    assert value is not None  # required=True raises instead of returning None
    return value
