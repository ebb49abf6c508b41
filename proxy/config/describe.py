"""``describe``: the effective config with every secret masked, as ``vipps-proxy
check`` prints it."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from yarl import URL

from proxy.config.load import Config
from proxy.redact import masked_url
from proxy.secret import Secret


def describe(config: Config) -> dict[str, Any]:
    """The effective config with every secret masked, for ``vipps-proxy check``."""

    def show(value: Any) -> Any:
        if isinstance(value, Secret):
            return str(value)
        if isinstance(value, URL):
            return masked_url(value)
        if isinstance(value, tuple | list):
            return [show(v) for v in value]
        if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
            return str(value)
        return value

    def section(obj: Any, skip: Callable[[str], bool] = lambda _: False) -> dict[str, Any]:
        fields = obj.__dataclass_fields__
        return {k: show(getattr(obj, k)) for k in fields if not skip(k)}

    return {
        "server": section(config.server),
        "log": section(config.log),
        "tls": section(config.tls),
        "credentials": {
            n: section(c, lambda k: k == "name") for n, c in config.credentials.items()
        },
        "routes": [section(r) for r in config.routes],
        "webhooks": [section(w) for w in config.webhooks],
        "store": section(config.store),
        "tracing": {
            **section(config.tracing),
            "headers": {n: str(v) for n, v in config.tracing.headers.items()},
        },
    }
