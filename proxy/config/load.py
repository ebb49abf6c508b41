"""``Config``, the whole document, and the one way to build it: ``load_config`` reads
the file, ``parse_config`` interpolates, reads each section and checks the rules that
span sections.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from proxy.config.credentials import Credentials, parse_credentials
from proxy.config.log import LogConfig, parse_log
from proxy.config.references import anchor_paths, file_digests, interpolate, named_files
from proxy.config.routes import Route, parse_routes
from proxy.config.server import ServerConfig, parse_server
from proxy.config.tls import TLSConfig, parse_tls
from proxy.config.tracing import TracingConfig, parse_tracing
from proxy.config.values import ConfigError, ConfigErrors, Table
from proxy.config.webhooks import StoreConfig, Webhook, check_callback_exposure, parse_webhooks
from proxy.secret import Secret


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    credentials: Mapping[str, Credentials] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    source: str = ""
    webhooks: tuple[Webhook, ...] = ()
    store: StoreConfig = field(default_factory=StoreConfig)
    #: Every file the config was read from or names (``${file:...}``, ``*_file`` keys,
    #: certificates): what a reload re-reads and ``reload_interval`` watches.
    files: tuple[str, ...] = ()
    #: Each of ``files``' content hash when the config was loaded (``load_config``): what
    #: a later check compares with, in this process or a worker given this config.
    digests: Mapping[str, str] = field(default_factory=dict, repr=False)
    tracing: TracingConfig = field(default_factory=TracingConfig)

    @property
    def secrets(self) -> tuple[Secret, ...]:
        """Every secret the config holds, for redaction."""
        held = [s for c in self.credentials.values() for s in c.secrets]
        hooks = [s for w in self.webhooks for s in w.secrets]
        collector = tuple(self.tracing.headers.values())
        in_urls = [s for w in self.webhooks for s in w.url_secrets]
        return (*held, *self.server.client_keys, *hooks, *collector, *in_urls)


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    pending_webhook_secrets: bool = False,
) -> Config:
    """Read, interpolate and validate the TOML file at ``path``. With
    ``pending_webhook_secrets``, a webhook's ``secret_file`` may not exist yet (what
    ``webhooks register`` is about to write): that hook then has no secret."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))  # a BOM: not TOML
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.__class__.__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"invalid TOML: {exc}") from None
    env = os.environ if env is None else env
    config = parse_config(raw, env, str(path), pending_webhook_secrets=pending_webhook_secrets)
    return replace(config, digests=file_digests(config.files))


def parse_config(
    raw: Mapping[str, Any],
    env: Mapping[str, str],
    source: str = "",
    *,
    pending_webhook_secrets: bool = False,
) -> Config:
    """Validate an already parsed TOML document; every relative path in it is taken
    from the folder of ``source`` (the config file), if given."""
    base = Path(source).resolve().parent if source else None
    unresolved: list[ConfigError] = []
    doc = Table(interpolate(dict(raw), "", env, unresolved, base), "")
    if unresolved:
        raise unresolved[0] if len(unresolved) == 1 else ConfigErrors(unresolved)
    anchor_paths(doc.data, "", base)
    doc.allow_only("server", "log", "tls", "credentials", "routes", "webhooks", "store", "tracing")
    server = parse_server(doc.table("server"))
    log = parse_log(doc.table("log"))
    tls = parse_tls(doc.table("tls"))
    creds_table = doc.table("credentials")
    credentials = {
        name: parse_credentials(creds_table.table(name), name) for name in creds_table.data
    }
    if not credentials:
        raise ConfigError("credentials", "at least one [credentials.NAME] set is required")
    routes = parse_routes(doc, credentials)
    webhooks, store = parse_webhooks(doc, base, pending_webhook_secrets)
    check_callback_exposure(server, webhooks)
    files = named_files(raw, doc.data, server, tls, source, base)
    config = Config(server, log, tls, credentials, routes, source, webhooks, store, files)
    return replace(config, tracing=parse_tracing(doc.table("tracing")))
