"""``[tls]``: outbound TLS (every upstream and token endpoint): verification, a CA
bundle, a client certificate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from proxy.config.values import ConfigError, Table


@dataclass(frozen=True)
class TLSConfig:
    verify: bool = True
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""


def parse_tls(t: Table) -> TLSConfig:
    t.allow_only(*TLSConfig.__dataclass_fields__)
    tls = TLSConfig(
        verify=t.get("verify", bool, True),
        ca_bundle=t.get("ca_bundle", str, ""),
        client_cert=t.get("client_cert", str, ""),
        client_key=t.get("client_key", str, ""),
    )
    for name in ("ca_bundle", "client_cert", "client_key"):
        path = getattr(tls, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{t.key}.{name}", f"file not found: {path}")
    if tls.client_key and not tls.client_cert:
        raise ConfigError(f"{t.key}.client_key", "needs client_cert")
    return tls
