"""The configuration: TOML in, frozen dataclasses out, every error naming its key.

``load_config(path)`` is the only entry point. Strings may hold ``${NAME}`` (an
environment variable; missing is an error), ``${NAME:-default}``, or ``${file:/path}``
(a file's contents, trailing newline stripped, the way container secrets arrive).
Secret keys also accept a ``<key>_file`` variant. Secrets are wrapped in
:class:`~proxy.secret.Secret` the moment they are read.

The map, one module per section of the TOML file:

- ``values``: ``ConfigError`` and ``Table``, reading one value: its type, the one-line
  error naming the key, did you mean, the wrong value shown (never a secret)
- ``references``: ``${NAME}``, ``${file:...}``, relative paths, the files the config names
- ``server``: ``[server]``, and the rule against exposing credentials to public addresses
- ``log``: ``[log]``
- ``tls``: ``[tls]``, outbound TLS
- ``credentials``: ``[credentials.NAME]``, one sales unit's token and secrets
- ``routes``: ``[[routes]]``
- ``webhooks``: ``[[webhooks]]`` and ``[store]``
- ``tracing``: ``[tracing]``
- ``load``: ``Config``, ``load_config`` and ``parse_config``: the sections read, the
  rules across them checked
- ``describe``: the effective config, secrets masked, for ``vipps-proxy check``

Every name is imported from here (``from proxy.config import Config``); the modules
import each other directly, never this one.
"""

from proxy.config.credentials import SYSTEM_HEADER_MAX, TOKEN_STYLES, Credentials, TokenStyle
from proxy.config.describe import describe
from proxy.config.load import Config, load_config, parse_config
from proxy.config.log import LOG_FORMATS, LOG_LEVELS, LogConfig
from proxy.config.references import file_digests
from proxy.config.routes import (
    AUTH_MODES,
    NEVER_SERVED_METHODS,
    ROUTE_METHODS,
    AuthMode,
    Route,
)
from proxy.config.server import (
    LOOPBACK,
    MIN_CLIENT_KEY,
    NOT_PUBLIC,
    ServerConfig,
    check_exposure,
    covers_public,
)
from proxy.config.tls import TLSConfig
from proxy.config.tracing import TracingConfig
from proxy.config.values import SECRET_KEYS, SHOWN_AT_MOST, ConfigError, ConfigErrors, Network
from proxy.config.webhooks import MAX_AGE, WEBHOOK_KINDS, StoreConfig, Webhook, WebhookKind

__all__ = [
    "AUTH_MODES",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LOOPBACK",
    "MAX_AGE",
    "MIN_CLIENT_KEY",
    "NEVER_SERVED_METHODS",
    "NOT_PUBLIC",
    "ROUTE_METHODS",
    "SECRET_KEYS",
    "SHOWN_AT_MOST",
    "SYSTEM_HEADER_MAX",
    "TOKEN_STYLES",
    "WEBHOOK_KINDS",
    "AuthMode",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "Credentials",
    "LogConfig",
    "Network",
    "Route",
    "ServerConfig",
    "StoreConfig",
    "TLSConfig",
    "TokenStyle",
    "TracingConfig",
    "Webhook",
    "WebhookKind",
    "check_exposure",
    "covers_public",
    "describe",
    "file_digests",
    "load_config",
    "parse_config",
]
