"""The configuration: TOML in, frozen dataclasses out, every error naming its key.

``load_config(path)`` is the only entry point. Strings may hold ``${NAME}`` (an
environment variable; missing is an error), ``${NAME:-default}``, or ``${file:/path}``
(a file's contents, trailing newline stripped, the way container secrets arrive).
Secret keys also accept a ``<key>_file`` variant. Secrets are wrapped in
:class:`~proxy.secret.Secret` the moment they are read.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import importlib.util
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast

from yarl import URL

from proxy.redact import masked_url, query_values
from proxy.secret import Secret

TokenStyle = Literal["accesstoken", "jwt-token", "oauth2"]
AuthMode = Literal["bearer", "client-credentials", "none"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

TOKEN_STYLES: Final = ("accesstoken", "jwt-token", "oauth2")
AUTH_MODES: Final = ("bearer", "client-credentials", "none")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("json", "console")
LOOPBACK: Final[tuple[Network, ...]] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
#: Addresses that are not public: private (RFC 1918), loopback, link-local, and IPv6
#: unique-local. No two of them touch, so a network inside their union is inside one.
NOT_PUBLIC: Final[tuple[Network, ...]] = (
    *LOOPBACK,
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fc00::/7"),
)
MIN_CLIENT_KEY: Final = 16  # characters; a shorter shared key can be guessed
# Vipps-System-* values: maxLength 30 in Vipps' specs (epayment.local.yml and
# vipps-ecom-api.yaml in tests/specs, the four Vipps-System-* header parameters).
SYSTEM_HEADER_MAX: Final = 30
#: What a route takes unless its ``methods`` say otherwise; others get 405.
ROUTE_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: Never served, whatever a route says: CONNECT opens a tunnel, TRACE reflects our credentials.
NEVER_SERVED_METHODS: Final = ("CONNECT", "TRACE")
_METHOD = re.compile(r"[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*")

_REF = re.compile(r"\$\{([^}]*)\}")
_MSN = re.compile(r"[0-9]+")
T = TypeVar("T")


class ConfigError(Exception):
    """A config problem; ``str()`` is one line: ``key: what is wrong``."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class ConfigErrors(ConfigError):
    """Several problems found in one pass (every missing variable); one line each."""

    def __init__(self, errors: list[ConfigError]) -> None:
        Exception.__init__(self, "\n".join(str(error) for error in errors))
        self.key = errors[0].key
        self.errors = tuple(errors)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    allow_clients: tuple[Network, ...] = LOOPBACK
    shutdown_timeout: float = 25.0
    client_keys: tuple[Secret, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    max_body_bytes: int = 0
    allow_open_network: bool = False
    header_timeout: float = 20.0
    body_timeout: float = 20.0
    max_connections: int = 1024
    reload_interval: float = 10.0
    admin_port: int = 0
    admin_host: str = "127.0.0.1"
    max_connections_per_client: int = 256


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: str = "json"


@dataclass(frozen=True)
class TLSConfig:
    verify: bool = True
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""


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


@dataclass(frozen=True)
class Route:
    prefix: str
    upstream: URL
    credentials: tuple[str, ...]
    auth: AuthMode = "bearer"
    subscription_key: bool = True
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    local_token_endpoints: bool = True
    #: With several credential sets: the one a call without Merchant-Serial-Number gets
    #: (empty: such a call is refused with 400 ``missing_msn``).
    default_credentials: str = ""
    methods: tuple[str, ...] = ROUTE_METHODS

    @property
    def name(self) -> str:
        """The route's name in logs and metrics: its prefix."""
        return self.prefix

    @cached_property
    def upstream_text(self) -> str:
        """The upstream as logged; formatted once, not per call."""
        return str(self.upstream)

    @cached_property
    def allow(self) -> str:
        """The ``Allow`` header of a 405 on this route: its methods."""
        return ", ".join(self.methods)

    @cached_property
    def upstream_base(self) -> str:
        """The upstream's base path, which the client's path is appended to."""
        return self.upstream.raw_path.rstrip("/")


WebhookKind = Literal["vipps-webhook", "ecom-callback"]
#: ``max_age``'s default: Vipps retries a webhook for 7 days and does not say that a
#: retry is signed anew, so a retry may carry its first ``x-ms-date``; a day's margin.
MAX_AGE: Final = 8 * 86400.0
WEBHOOK_KINDS: Final = ("vipps-webhook", "ecom-callback")


@dataclass(frozen=True)
class Webhook:
    """One inbound path Vipps calls, relayed to the legacy app (``[[webhooks]]``)."""

    path: str
    kind: WebhookKind
    deliver_to: URL
    #: vipps-webhook only: the newest first; any of them verifies (a rotation's overlap)
    secrets: tuple[Secret, ...] = ()
    public_url: URL | None = None
    max_age: float = MAX_AGE
    retry_for: float = 604800.0
    allow_from: tuple[Network, ...] = ()
    max_pending: int = 100000  # events waiting or failed; past it, 503
    max_per_minute: int = 600  # ecom-callback: stored per client address; past it, 429

    @property
    def url_secrets(self) -> tuple[Secret, ...]:
        """The query values of ``deliver_to`` and ``public_url`` (an app key, a
        signature): masked like secrets wherever logged."""
        urls = (self.deliver_to, self.public_url) if self.public_url else (self.deliver_to,)
        return tuple(Secret(value) for url in urls for value in query_values(url))


@dataclass(frozen=True)
class StoreConfig:
    """Where received events are kept (``[store]``); an absolute path."""

    path: str = "var/vipps-proxy.sqlite3"


@dataclass(frozen=True)
class TracingConfig:
    """``[tracing]``: OpenTelemetry spans over OTLP/HTTP; off while ``endpoint`` is empty."""

    endpoint: str = ""
    service_name: str = "vipps-proxy"
    sample_ratio: float = 1.0  # parent-based: a client's sampled flag wins
    headers: Mapping[str, Secret] = field(default_factory=dict)  # for the collector


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


# --------------------------------------------------------------------------- loading


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
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("config", f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.__class__.__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"invalid TOML: {exc}") from None
    env = os.environ if env is None else env
    config = parse_config(raw, env, str(path), pending_webhook_secrets=pending_webhook_secrets)
    return replace(config, digests=file_digests(config.files))


def file_digests(paths: Iterable[str]) -> dict[str, str]:
    """Each file's content hash (through symlinks); an unreadable file hashes as ``-``."""
    found: dict[str, str] = {}
    for path in paths:
        try:
            found[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            found[path] = "-"
    return found


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
    doc = _Table(_interpolate(dict(raw), "", env, unresolved, base), "")
    if unresolved:
        raise unresolved[0] if len(unresolved) == 1 else ConfigErrors(unresolved)
    _anchor_paths(doc.data, "", base)
    doc.allow_only("server", "log", "tls", "credentials", "routes", "webhooks", "store", "tracing")
    server = _server(doc.table("server"))
    log = _log(doc.table("log"))
    tls = _tls(doc.table("tls"))
    creds_table = doc.table("credentials")
    credentials = {name: _credentials(creds_table.table(name), name) for name in creds_table.data}
    if not credentials:
        raise ConfigError("credentials", "at least one [credentials.NAME] set is required")
    routes = _routes(doc, credentials)
    webhooks, store = _webhooks(doc, base, pending_webhook_secrets)
    _check_callback_exposure(server, webhooks)
    files = _named_files(raw, doc.data, server, tls, source, base)
    config = Config(server, log, tls, credentials, routes, source, webhooks, store, files)
    return replace(config, tracing=_tracing(doc.table("tracing")))


def _named_files(
    raw: Mapping[str, Any],
    resolved: Mapping[str, Any],
    server: ServerConfig,
    tls: TLSConfig,
    source: str,
    base: Path | None,
) -> tuple[str, ...]:
    """The config file and every file it names, each once, in a stable order."""
    found: list[str] = [source] if source else []

    def walk(value: Any, resolved_value: Any) -> None:
        if isinstance(value, str):
            refs = (m.group(1) for m in _REF.finditer(value))
            found.extend(_at(base, ref[5:]) for ref in refs if ref[:5] == "file:")
        elif isinstance(value, dict):
            for key, item in value.items():
                other = resolved_value.get(key) if isinstance(resolved_value, dict) else None
                if key.endswith("_file") and isinstance(other, str):
                    found.append(other)
                walk(item, other)
        elif isinstance(value, list):
            others = resolved_value if isinstance(resolved_value, list) else []
            for i, item in enumerate(value):
                walk(item, others[i] if i < len(others) else None)

    walk(dict(raw), resolved)
    found += [server.tls_cert, server.tls_key, server.client_ca]
    found += [tls.ca_bundle, tls.client_cert, tls.client_key]
    return tuple(dict.fromkeys(path for path in found if path))


def _interpolate(
    value: Any, key: str, env: Mapping[str, str], errors: list[ConfigError], base: Path | None
) -> Any:
    """``value`` with every reference resolved; each one that cannot be goes to ``errors``."""
    if isinstance(value, str):
        return _REF.sub(lambda m: _resolve_or_note(m.group(1), key, env, errors, base), value)
    if isinstance(value, dict):
        return {k: _interpolate(v, _join(key, k), env, errors, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{key}[{i}]", env, errors, base) for i, v in enumerate(value)]
    return value


def _resolve_or_note(
    ref: str, key: str, env: Mapping[str, str], errors: list[ConfigError], base: Path | None
) -> str:
    try:
        return _resolve(ref, key, env, base)
    except ConfigError as exc:
        errors.append(exc)
        return ""


def _resolve(ref: str, key: str, env: Mapping[str, str], base: Path | None) -> str:
    if ref.startswith("file:"):
        return _read_secret_file(_at(base, ref[5:]), key)
    name, sep, default = ref.partition(":-")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConfigError(key, f"bad reference ${{{ref}}}")
    if name in env:
        return env[name]
    if sep:
        return default
    raise ConfigError(key, f"environment variable {name} is not set")


#: Keys (``section.name``) whose value is a path; so is every ``*_file`` key.
_PATH_KEYS: Final = frozenset(
    {
        "server.tls_cert",
        "server.tls_key",
        "server.client_ca",
        "tls.ca_bundle",
        "tls.client_cert",
        "tls.client_key",
        "store.path",
    }
)


def _at(base: Path | None, path: str) -> str:
    """``path`` taken from ``base`` (the config file's folder) if it is relative."""
    if base is None or not path or Path(path).is_absolute():
        return path
    return str(base / path)


def _anchor_paths(data: Any, key: str, base: Path | None) -> None:
    """Every path in the (interpolated) document made absolute from ``base``, in place:
    one rule for secret files, certificates, CA bundles and the store."""
    if isinstance(data, list):
        for i, item in enumerate(data):
            _anchor_paths(item, f"{key}[{i}]", base)
    if not isinstance(data, dict):
        return
    for name, value in data.items():
        full = _join(key, name)
        if isinstance(value, str) and (name.endswith("_file") or full in _PATH_KEYS):
            data[name] = _at(base, value)
        else:
            _anchor_paths(value, full, base)


def _read_secret_file(path: str, key: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(key, f"cannot read file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"file {path} is not UTF-8 text") from None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Table:
    """A TOML table that knows its own key path, so every error can name the key."""

    def __init__(self, data: Any, key: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(key, "must be a table")
        self.data: dict[str, Any] = data
        self.key = key

    def allow_only(self, *names: str) -> None:
        for name in self.data:
            if name not in names:
                raise ConfigError(_join(self.key, name), "unknown key" + _did_you_mean(name, names))

    def table(self, name: str) -> _Table:
        return _Table(self.data.get(name, {}), _join(self.key, name))

    def get(self, name: str, kind: type[T], default: T) -> T:
        value = self.data.get(name, default)
        return _check_type(value, kind, _join(self.key, name))

    def require(self, name: str, kind: type[T]) -> T:
        if name not in self.data:
            raise ConfigError(_join(self.key, name), "is required")
        return _check_type(self.data[name], kind, _join(self.key, name))

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        key = _join(self.key, name)
        given = self.data.get(name, default)
        value = _number(given, key)
        if not value >= minimum:  # NaN too: max_age = nan would never find a date stale
            raise ConfigError(key, f"must be at least {minimum:g}" + _got(key, given))
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in options:
            allowed = " | ".join(options)
            raise ConfigError(_join(self.key, name), f"must be one of {allowed}, not {value!r}")
        return value

    def secret(self, name: str, *, required: bool = True) -> Secret | None:
        """A secret value, given inline or as ``<name>_file``."""
        file_key = f"{name}_file"
        if file_key in self.data:
            path = self.require(file_key, str)
            value = _read_secret_file(path, _join(self.key, file_key))
        elif name in self.data:
            value = self.require(name, str)
        elif required:
            raise ConfigError(_join(self.key, name), "is required")
        else:
            return None
        if not value.strip():
            raise ConfigError(_join(self.key, name), "is empty")
        return Secret(value)


def _did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the known name closest to ``name``, if one is close."""
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


#: Keys whose values are secrets (or may be): a wrong one is never shown in an error.
SECRET_KEYS: Final = frozenset(
    {
        "client_id",
        "client_secret",
        "subscription_key",
        "token_subscription_key",
        "secret",
        "client_keys",
    }
)
SHOWN_AT_MOST: Final = 60  # characters of a wrong value shown in an error


def _got(key: str, value: Any) -> str:
    """``, got <value>`` for an error about ``key``'s value, unless the key is a secret's."""
    name = key.rsplit(".", 1)[-1].split("[", 1)[0]
    if name in SECRET_KEYS:
        return ""
    shown = repr(value)
    if len(shown) > SHOWN_AT_MOST:
        shown = shown[: SHOWN_AT_MOST - 3] + "..."
    return f", got {shown}"


def _check_type(value: Any, kind: type[T], key: str) -> T:
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(key, "must be true or false" + _got(key, value))
    if not isinstance(value, kind):
        raise ConfigError(key, f"must be a {_kind_name(kind)}" + _got(key, value))
    return value


def _kind_name(kind: type[Any]) -> str:
    names = {str: "string", list: "list", dict: "table", bool: "boolean", int: "integer"}
    return names.get(kind, kind.__name__)


def _number(value: Any, key: str) -> float:
    """A number, also accepted as a numeric string (values often come from ``${ENV}``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(key, "must be a number" + _got(key, value))


def _integer(table: _Table, name: str, default: int, low: int, high: int) -> int:
    key = _join(table.key, name)
    given = table.data.get(name, default)
    value = _number(given, key)
    if not low <= value <= high or value != int(value):
        raise ConfigError(key, f"must be a whole number from {low} to {high}" + _got(key, given))
    return int(value)


# --------------------------------------------------------------------------- sections


def _server(t: _Table) -> ServerConfig:
    t.allow_only(*ServerConfig.__dataclass_fields__)
    keys = tuple(
        _client_key(k, f"{t.key}.client_keys[{i}]")
        for i, k in enumerate(t.get("client_keys", list, []))
    )
    server = ServerConfig(
        host=t.get("host", str, "127.0.0.1"),
        port=_integer(t, "port", 8080, 0, 65535),
        workers=_integer(t, "workers", 1, 1, 64),
        allow_clients=_networks(t),
        shutdown_timeout=t.number("shutdown_timeout", 25.0),
        client_keys=keys,
        tls_cert=t.get("tls_cert", str, ""),
        tls_key=t.get("tls_key", str, ""),
        client_ca=t.get("client_ca", str, ""),
        max_body_bytes=_integer(t, "max_body_bytes", 0, 0, 2**62),
        allow_open_network=t.get("allow_open_network", bool, False),
        header_timeout=t.number("header_timeout", 20.0, minimum=0.1),
        body_timeout=t.number("body_timeout", 20.0, minimum=0.1),
        max_connections=_integer(t, "max_connections", 1024, 1, 1_000_000),
        reload_interval=t.number("reload_interval", 10.0),
        admin_port=_integer(t, "admin_port", 0, 0, 65535),
        admin_host=t.get("admin_host", str, "127.0.0.1"),
        max_connections_per_client=_integer(t, "max_connections_per_client", 256, 1, 1_000_000),
    )
    _check_server_tls(server, t.key)
    _check_exposure(server, t.key)
    if server.admin_port and server.admin_port == server.port:
        raise ConfigError(f"{t.key}.admin_port", f"must differ from port, got {server.port}")
    return server


def _client_key(value: Any, key: str) -> Secret:
    """A client key: a string of at least MIN_CLIENT_KEY characters (``${KEY:-}`` with
    KEY unset is empty, and must not count as a guard)."""
    text = _check_type(value, str, key)
    if not text.strip():
        raise ConfigError(key, "is empty")
    if len(text) < MIN_CLIENT_KEY:
        raise ConfigError(key, f"must be at least {MIN_CLIENT_KEY} characters")
    return Secret(text)


def _networks(t: _Table) -> tuple[Network, ...]:
    items = t.get("allow_clients", list, ["127.0.0.0/8", "::1/128"])
    networks = []
    for i, item in enumerate(items):
        key = f"{t.key}.allow_clients[{i}]"
        try:
            networks.append(ipaddress.ip_network(_check_type(item, str, key), strict=False))
        except ValueError:
            raise ConfigError(key, f"not a CIDR network: {item!r}") from None
    return tuple(networks)


def _check_server_tls(server: ServerConfig, key: str) -> None:
    if bool(server.tls_cert) != bool(server.tls_key):
        raise ConfigError(f"{key}.tls_key", "tls_cert and tls_key go together")
    if server.client_ca and not server.tls_cert:
        raise ConfigError(f"{key}.client_ca", "needs tls_cert and tls_key")
    for name in ("tls_cert", "tls_key", "client_ca"):
        path = getattr(server, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"{key}.{name}", f"file not found: {path}")


def _check_exposure(server: ServerConfig, key: str) -> None:
    """Refuse to hand our credentials to the internet by accident: a listener beyond
    loopback, unguarded, may let in private, loopback and link-local addresses only."""
    if _is_loopback_host(server.host) or server.allow_open_network:
        return
    if server.client_keys or server.client_ca:
        return
    for i, net in enumerate(server.allow_clients):
        if covers_public(net):
            raise ConfigError(
                f"{key}.allow_clients[{i}]",
                f"{net} lets in public addresses while listening beyond loopback without "
                "client_keys or client_ca; narrow allow_clients to private networks, add "
                "either, or set allow_open_network = true",
            )


def _check_callback_exposure(server: ServerConfig, hooks: tuple[Webhook, ...]) -> None:
    """eCom callbacks are unsigned and skip client keys: beyond loopback, the addresses
    let in (``allow_clients`` and the hook's ``allow_from``) must not be public unless
    ``allow_open_network`` says so."""
    if _is_loopback_host(server.host) or server.allow_open_network:
        return
    for i, hook in enumerate(hooks):
        if hook.kind != "ecom-callback":
            continue
        named = [("server.allow_clients", server.allow_clients)]
        named.append((f"webhooks[{i}].allow_from", hook.allow_from))
        for key, nets in named:
            for j, net in enumerate(nets):
                if covers_public(net):
                    raise ConfigError(
                        f"{key}[{j}]",
                        f"{net} lets public addresses send unsigned eCom callbacks to "
                        f"{hook.path}; narrow it to private networks or set "
                        "server.allow_open_network = true",
                    )


def covers_public(net: Network) -> bool:
    """True if ``net`` holds any address that is not private, loopback, link-local or
    unique-local."""
    return not any(
        net.version == other.version and net.subnet_of(other)  # type: ignore[arg-type]
        for other in NOT_PUBLIC
    )


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _log(t: _Table) -> LogConfig:
    t.allow_only("level", "format")
    return LogConfig(
        level=t.choice("level", LOG_LEVELS, "info"),
        format=t.choice("format", LOG_FORMATS, "json"),
    )


def _tracing(t: _Table) -> TracingConfig:
    t.allow_only("endpoint", "service_name", "sample_ratio", "headers")
    endpoint = t.get("endpoint", str, "").strip()
    ratio = t.number("sample_ratio", 1.0)
    if ratio > 1:
        raise ConfigError(_join(t.key, "sample_ratio"), "must be between 0 and 1")
    headers = t.table("headers")
    config = TracingConfig(
        endpoint=endpoint,
        service_name=t.get("service_name", str, "vipps-proxy").strip() or "vipps-proxy",
        sample_ratio=ratio,
        headers={
            n: Secret(_check_type(v, str, _join(headers.key, n))) for n, v in headers.data.items()
        },
    )
    if endpoint:
        _check_collector_url(endpoint, _join(t.key, "endpoint"))
    return config


def _check_collector_url(endpoint: str, key: str) -> None:
    """An http(s) URL, and the ``tracing`` extra installed to send to it."""
    url = URL(endpoint)
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(key, f"must be an http:// or https:// URL, not {endpoint!r}")
    if not _tracing_installed():
        raise ConfigError(
            key, "tracing needs the extra: pip install 'vipps-proxy[tracing]' (not installed)"
        )


def _tracing_installed() -> bool:
    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
    except ImportError:  # a parent package missing or blocked
        return False


def _tls(t: _Table) -> TLSConfig:
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


def _header_value(t: _Table, name: str) -> str:
    """A value sent as a header field (RFC 9110 §5.5): no control character but tab."""
    value = t.get(name, str, "")
    if any((c < " " and c != "\t") or c == "\x7f" for c in value):
        raise ConfigError(_join(t.key, name), "has a control character")
    return value


def _credentials(t: _Table, name: str) -> Credentials:
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
    token_url = _url(t, "token_url")
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


def _merchant_serial_number(t: _Table) -> str:
    """Empty, or the digits Vipps numbers a sales unit with."""
    msn = t.get("merchant_serial_number", str, "")
    if msn and not _MSN.fullmatch(msn):
        raise ConfigError(f"{t.key}.merchant_serial_number", f"must be digits, not {msn!r}")
    return msn


def _required_secret(t: _Table, name: str) -> Secret:
    value = t.secret(name)
    assert value is not None  # required=True raises instead of returning None
    return value


def _url(t: _Table, name: str) -> URL:
    text = t.require(name, str)
    url = _no_userinfo(URL(text), _join(t.key, name))
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(_join(t.key, name), f"not a URL: {text!r}")
    return url


def _no_userinfo(url: URL, key: str) -> URL:
    """A URL with a user or password is refused: it would be shown wherever the URL
    is (``check``, every log line) and is never used. The message shows neither."""
    if url.raw_user is not None or url.raw_password is not None:
        raise ConfigError(key, "must not hold a user or password (user:password@)")
    return url


_ROUTE_KEYS: Final = [
    "prefix",
    "upstream",
    "credentials",
    "auth",
    "subscription_key",
    "connect_timeout",
    "read_timeout",
    "local_token_endpoints",
    "default_credentials",
    "methods",
]


def _routes(doc: _Table, credentials: Mapping[str, Credentials]) -> tuple[Route, ...]:
    items = doc.get("routes", list, [])
    if not items:
        if len(credentials) > 1:
            raise ConfigError("routes", "several credential sets need [[routes]]")
        only = next(iter(credentials.values()))
        return (Route("/", only.token_url.origin(), (only.name,)),)
    routes = [_route(_Table(item, f"routes[{i}]"), credentials) for i, item in enumerate(items)]
    seen: set[bytes] = set()
    for i, route in enumerate(routes):
        # as the router reads a prefix: ASCII letters in any case, a trailing slash or not
        read_as = route.prefix.rstrip("/").encode("utf-8", "surrogatepass").lower()
        if read_as in seen:
            raise ConfigError(f"routes[{i}].prefix", f"duplicate prefix {route.prefix!r}")
        seen.add(read_as)
    return tuple(routes)


def _route(t: _Table, credentials: Mapping[str, Credentials]) -> Route:
    t.allow_only(*_ROUTE_KEYS)
    prefix = t.require("prefix", str)
    if not prefix.startswith("/"):
        raise ConfigError(f"{t.key}.prefix", "must start with /")
    if any(c in prefix for c in "%;?#\\"):
        # the router matches the path as the upstream reads it (escapes decoded, no
        # parameters): a prefix written with them would never match
        raise ConfigError(f"{t.key}.prefix", "write the path plainly: no %, ;, ?, # or \\")
    upstream = _url(t, "upstream")
    if upstream.query_string or upstream.fragment:
        raise ConfigError(f"{t.key}.upstream", "must not have a query or fragment")
    auth = cast(AuthMode, t.choice("auth", AUTH_MODES, "bearer"))
    names = _route_credentials(t, credentials, auth)
    local_token_endpoints = t.get("local_token_endpoints", bool, True)
    if auth == "client-credentials" and not local_token_endpoints:
        # forwarded with our client_id and secret, a token call hands the real token out
        raise ConfigError(
            f"{t.key}.local_token_endpoints",
            f"route {prefix!r} sends client credentials: its token paths must be answered "
            "locally (leave local_token_endpoints out, or true)",
        )
    return Route(
        prefix=prefix,
        upstream=upstream,
        credentials=names,
        auth=auth,
        subscription_key=t.get("subscription_key", bool, True),
        connect_timeout=t.number("connect_timeout", 5.0, minimum=0.001),
        read_timeout=t.number("read_timeout", 60.0, minimum=0.001),
        local_token_endpoints=local_token_endpoints,
        default_credentials=_default_credentials(t, names),
        methods=_methods(t),
    )


def _default_credentials(t: _Table, names: tuple[str, ...]) -> str:
    """The set named for calls without Merchant-Serial-Number: one of the route's own."""
    name = t.get("default_credentials", str, "")
    if name and name not in names:
        listed = ", ".join(names) or "none"
        raise ConfigError(
            f"{t.key}.default_credentials",
            f"must be one of the route's credential sets ({listed}), not {name!r}",
        )
    return name


def _methods(t: _Table) -> tuple[str, ...]:
    """``methods``: request methods as sent (upper case), never CONNECT or TRACE."""
    key = f"{t.key}.methods"
    items = t.get("methods", list, list(ROUTE_METHODS))
    if not items:
        raise ConfigError(key, "must name at least one method")
    for i, item in enumerate(items):
        method = _check_type(item, str, f"{key}[{i}]")
        if not _METHOD.fullmatch(method):
            raise ConfigError(f"{key}[{i}]", f"not a method in upper case: {method!r}")
        if method in NEVER_SERVED_METHODS:
            raise ConfigError(f"{key}[{i}]", f"{method} is never served by the proxy")
    return tuple(dict.fromkeys(items))


def _route_credentials(
    t: _Table, credentials: Mapping[str, Credentials], auth: str
) -> tuple[str, ...]:
    key = f"{t.key}.credentials"
    value: Any = t.data.get("credentials")
    if value is None:
        if auth == "none":
            return ()
        if len(credentials) != 1:
            raise ConfigError(key, "is required when there are several credential sets")
        return (next(iter(credentials)),)
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise ConfigError(key, "must be a credential set name or a non-empty list of names")
    for i, name in enumerate(names):
        if not isinstance(name, str) or name not in credentials:
            raise ConfigError(key, f"unknown credential set {name!r}")
        if len(names) > 1 and not credentials[name].merchant_serial_number:
            raise ConfigError(
                f"credentials.{name}.merchant_serial_number",
                f"is required: {key}[{i}] picks sets by merchant serial number",
            )
    return tuple(names)


_WEBHOOK_KEYS: Final = [
    "path",
    "kind",
    "secret",
    "secret_file",
    "deliver_to",
    "public_url",
    "max_age",
    "retry_for",
    "allow_from",
    "max_pending",
    "max_per_minute",
]


def _webhooks(
    doc: _Table, base: Path | None, pending_secrets: bool
) -> tuple[tuple[Webhook, ...], StoreConfig]:
    """``[[webhooks]]`` and ``[store]``; the store path is relative to the config's folder."""
    items = doc.get("webhooks", list, [])
    hooks = tuple(
        _webhook(_Table(item, f"webhooks[{i}]"), pending_secrets) for i, item in enumerate(items)
    )
    seen: set[str] = set()
    for i, hook in enumerate(hooks):
        if hook.path in seen:
            raise ConfigError(f"webhooks[{i}].path", f"duplicate path {hook.path!r}")
        seen.add(hook.path)
    store = doc.table("store")
    store.allow_only("path")
    path = Path(_at(base, store.get("path", str, StoreConfig.path))).resolve()
    return hooks, StoreConfig(str(path))


def _webhook(t: _Table, pending_secret: bool = False) -> Webhook:
    t.allow_only(*_WEBHOOK_KEYS)
    path = t.require("path", str)
    if not path.startswith("/") or path.startswith("/-/") or "?" in path:
        raise ConfigError(f"{t.key}.path", "must start with / (not /-/) and have no query")
    kind = cast(WebhookKind, t.choice("kind", WEBHOOK_KINDS, "vipps-webhook"))
    if kind == "ecom-callback" and path.endswith("/"):
        # a prefix: "/" would take every call, and after one ending in "/" the rest of a
        # callback's path does not start with "/", so every callback would be refused
        raise ConfigError(f"{t.key}.path", "an ecom-callback path must not be / or end in /")
    secret_file = t.data.get("secret_file")
    pending = pending_secret and isinstance(secret_file, str) and not Path(secret_file).exists()
    secrets = () if pending else _webhook_secrets(t, required=kind == "vipps-webhook")
    if kind == "ecom-callback" and secrets:
        raise ConfigError(f"{t.key}.secret", "eCom callbacks are not signed; leave it out")
    deliver_to = _url(t, "deliver_to")
    public = t.get("public_url", str, "")
    public_url = _no_userinfo(URL(public), f"{t.key}.public_url") if public else None
    if public_url is not None and (
        public_url.scheme not in ("http", "https") or not public_url.host
    ):
        raise ConfigError(f"{t.key}.public_url", f"not a URL: {public!r}")
    return Webhook(
        path=path,
        kind=kind,
        deliver_to=deliver_to,
        secrets=secrets,
        public_url=public_url,
        max_age=t.number("max_age", MAX_AGE, minimum=1.0),
        retry_for=t.number("retry_for", 604800.0),
        allow_from=_cidrs(t, "allow_from"),
        max_pending=_integer(t, "max_pending", 100000, 1, 1_000_000_000),
        max_per_minute=_per_minute(t, kind),
    )


def _webhook_secrets(t: _Table, *, required: bool) -> tuple[Secret, ...]:
    """``secret``: one string or a list (a rotation); ``secret_file``: one per line."""
    if "secret_file" in t.data or isinstance(t.data.get("secret", ""), str):
        if "secret_file" in t.data:
            text = _read_secret_file(t.require("secret_file", str), f"{t.key}.secret_file")
            values = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            one = t.secret("secret", required=required)
            values = [] if one is None else [one.reveal()]
    else:
        items = t.require("secret", list)
        values = [_check_type(v, str, f"{t.key}.secret[{i}]") for i, v in enumerate(items)]
    if required and not values:
        raise ConfigError(f"{t.key}.secret", "is empty")
    for i, value in enumerate(values):
        if not value.strip():
            raise ConfigError(f"{t.key}.secret[{i}]", "is empty")
    return tuple(Secret(v) for v in values)


def _per_minute(t: _Table, kind: WebhookKind) -> int:
    if kind != "ecom-callback" and "max_per_minute" in t.data:
        raise ConfigError(f"{t.key}.max_per_minute", "for ecom-callback only (webhooks are signed)")
    return _integer(t, "max_per_minute", 600, 1, 1_000_000)


def _cidrs(t: _Table, name: str) -> tuple[Network, ...]:
    networks = []
    for i, item in enumerate(t.get(name, list, [])):
        key = f"{t.key}.{name}[{i}]"
        try:
            networks.append(ipaddress.ip_network(_check_type(item, str, key), strict=False))
        except ValueError:
            raise ConfigError(key, f"not a CIDR network: {item!r}") from None
    return tuple(networks)


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
