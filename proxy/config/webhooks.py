"""``[[webhooks]]`` and ``[store]``: the inbound paths Vipps calls (signed webhooks and
eCom callbacks), where each is delivered, its bounds; where received events are kept.
Also the rule that unsigned eCom callbacks are not open to public addresses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast

from yarl import URL

from proxy.config.references import at
from proxy.config.server import ServerConfig, covers_public, is_loopback_host
from proxy.config.values import (
    ConfigError,
    Network,
    Table,
    check_type,
    http_url,
    integer,
    networks,
    no_userinfo,
    read_secret_file,
)
from proxy.redact import query_values
from proxy.secret import Secret

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


def parse_webhooks(
    doc: Table, base: Path | None, pending_secrets: bool
) -> tuple[tuple[Webhook, ...], StoreConfig]:
    """``[[webhooks]]`` and ``[store]``; the store path is relative to the config's folder."""
    items = doc.get("webhooks", list, [])
    hooks = tuple(
        _webhook(Table(item, f"webhooks[{i}]"), pending_secrets) for i, item in enumerate(items)
    )
    seen: set[str] = set()
    for i, hook in enumerate(hooks):
        if hook.path in seen:
            raise ConfigError(f"webhooks[{i}].path", f"duplicate path {hook.path!r}")
        seen.add(hook.path)
    store = doc.table("store")
    store.allow_only("path")
    path = Path(at(base, store.get("path", str, StoreConfig.path))).resolve()
    return hooks, StoreConfig(str(path))


def _webhook(t: Table, pending_secret: bool = False) -> Webhook:
    t.allow_only(*_WEBHOOK_KEYS)
    path = t.require("path", str)
    if not path.startswith("/") or path.startswith("/-/") or "?" in path:
        raise ConfigError(f"{t.key}.path", "must start with / (not /-/) and have no query")
    kind = cast(WebhookKind, t.choice("kind", WEBHOOK_KINDS, "vipps-webhook"))
    if kind == "ecom-callback" and path.endswith("/"):
        # a prefix: "/" would take every call, and after one ending in "/" the rest of a
        # callback's path does not start with "/", so every callback would be refused
        raise ConfigError(f"{t.key}.path", "an ecom-callback path must not be / or end in /")
    t.one_of("secret", "secret_file")
    secret_file = t.data.get("secret_file")
    pending = pending_secret and isinstance(secret_file, str) and not Path(secret_file).exists()
    secrets = () if pending else _webhook_secrets(t, required=kind == "vipps-webhook")
    if kind == "ecom-callback" and secrets:
        raise ConfigError(f"{t.key}.secret", "eCom callbacks are not signed; leave it out")
    deliver_to = http_url(t, "deliver_to")
    public = t.get("public_url", str, "")
    public_url = no_userinfo(URL(public), f"{t.key}.public_url") if public else None
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
        allow_from=networks(t, "allow_from", []),
        max_pending=integer(t, "max_pending", 100000, 1, 1_000_000_000),
        max_per_minute=_per_minute(t, kind),
    )


def _webhook_secrets(t: Table, *, required: bool) -> tuple[Secret, ...]:
    """``secret``: one string or a list (a rotation); ``secret_file``: one per line."""
    if "secret_file" in t.data or isinstance(t.data.get("secret", ""), str):
        if "secret_file" in t.data:
            text = read_secret_file(t.require("secret_file", str), f"{t.key}.secret_file")
            values = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            one = t.secret("secret", required=required)
            values = [] if one is None else [one.reveal()]
    else:
        items = t.require("secret", list)
        values = [check_type(v, str, f"{t.key}.secret[{i}]") for i, v in enumerate(items)]
    if required and not values:
        raise ConfigError(f"{t.key}.secret", "is empty")
    for i, value in enumerate(values):
        if not value.strip():
            raise ConfigError(f"{t.key}.secret[{i}]", "is empty")
    return tuple(Secret(v) for v in values)


def _per_minute(t: Table, kind: WebhookKind) -> int:
    if kind != "ecom-callback" and "max_per_minute" in t.data:
        raise ConfigError(f"{t.key}.max_per_minute", "for ecom-callback only (webhooks are signed)")
    return integer(t, "max_per_minute", 600, 1, 1_000_000)


def check_callback_exposure(server: ServerConfig, hooks: tuple[Webhook, ...]) -> None:
    """eCom callbacks are unsigned and skip client keys: beyond loopback, the addresses
    let in (``allow_clients`` and the hook's ``allow_from``) must not be public unless
    ``allow_open_network`` says so."""
    if is_loopback_host(server.host) or server.allow_open_network:
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
