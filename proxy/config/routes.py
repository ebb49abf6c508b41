"""``[[routes]]``: path prefixes, each with its upstream, credential sets, auth mode,
time-outs and methods; the one route made when none is configured.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final, Literal, cast

from yarl import URL

from proxy.config.credentials import Credentials
from proxy.config.values import ConfigError, Table, check_type, http_url

AuthMode = Literal["bearer", "client-credentials", "none"]

AUTH_MODES: Final = ("bearer", "client-credentials", "none")

#: What a route takes unless its ``methods`` say otherwise; others get 405.
ROUTE_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

#: Never served, whatever a route says: CONNECT opens a tunnel, TRACE reflects our credentials.
NEVER_SERVED_METHODS: Final = ("CONNECT", "TRACE")
_METHOD = re.compile(r"[A-Z][A-Z0-9!#$%&'*+.^_`|~-]*")


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


def parse_routes(doc: Table, credentials: Mapping[str, Credentials]) -> tuple[Route, ...]:
    items = doc.get("routes", list, [])
    if not items:
        if len(credentials) > 1:
            raise ConfigError("routes", "several credential sets need [[routes]]")
        only = next(iter(credentials.values()))
        return (Route("/", only.token_url.origin(), (only.name,)),)
    routes = [_route(Table(item, f"routes[{i}]"), credentials) for i, item in enumerate(items)]
    seen: set[bytes] = set()
    for i, route in enumerate(routes):
        # as the router reads a prefix: ASCII letters in any case, a trailing slash or not
        read_as = route.prefix.rstrip("/").encode("utf-8", "surrogatepass").lower()
        if read_as in seen:
            raise ConfigError(f"routes[{i}].prefix", f"duplicate prefix {route.prefix!r}")
        seen.add(read_as)
    return tuple(routes)


def _route(t: Table, credentials: Mapping[str, Credentials]) -> Route:
    t.allow_only(*_ROUTE_KEYS)
    prefix = t.require("prefix", str)
    if not prefix.startswith("/"):
        raise ConfigError(f"{t.key}.prefix", "must start with /")
    if any(c in prefix for c in "%;?#\\"):
        # the router matches the path as the upstream reads it (escapes decoded, no
        # parameters): a prefix written with them would never match
        raise ConfigError(f"{t.key}.prefix", "write the path plainly: no %, ;, ?, # or \\")
    upstream = http_url(t, "upstream")
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


def _default_credentials(t: Table, names: tuple[str, ...]) -> str:
    """The set named for calls without Merchant-Serial-Number: one of the route's own."""
    name = t.get("default_credentials", str, "")
    if name and name not in names:
        listed = ", ".join(names) or "none"
        raise ConfigError(
            f"{t.key}.default_credentials",
            f"must be one of the route's credential sets ({listed}), not {name!r}",
        )
    return name


def _methods(t: Table) -> tuple[str, ...]:
    """``methods``: request methods as sent (upper case), never CONNECT or TRACE."""
    key = f"{t.key}.methods"
    items = t.get("methods", list, list(ROUTE_METHODS))
    if not items:
        raise ConfigError(key, "must name at least one method")
    for i, item in enumerate(items):
        method = check_type(item, str, f"{key}[{i}]")
        if not _METHOD.fullmatch(method):
            raise ConfigError(f"{key}[{i}]", f"not a method in upper case: {method!r}")
        if method in NEVER_SERVED_METHODS:
            raise ConfigError(f"{key}[{i}]", f"{method} is never served by the proxy")
    return tuple(dict.fromkeys(items))


def _route_credentials(
    t: Table, credentials: Mapping[str, Credentials], auth: str
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
