"""Reading one value of the config: the key path, the type, the one-line error.

Every section reads its table through :class:`Table`, which knows its own key path, so
each problem becomes a :class:`ConfigError` whose one line names the key (``cli``
prints it and exits 2): an unknown key with the closest known one (did you mean ...?),
the wrong value shown (never a secret's, and at most ``SHOWN_AT_MOST`` characters),
secret files read, URLs refused with a user or password in them.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, TypeVar

from yarl import URL

from proxy.secret import Secret

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class Table:
    """A TOML table that knows its own key path, so every error can name the key."""

    def __init__(self, data: Any, key: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(key, "must be a table")
        self.data: dict[str, Any] = data
        self.key = key

    def allow_only(self, *names: str) -> None:
        for name in self.data:
            if name not in names:
                raise ConfigError(join(self.key, name), "unknown key" + did_you_mean(name, names))

    def table(self, name: str) -> Table:
        return Table(self.data.get(name, {}), join(self.key, name))

    def get(self, name: str, kind: type[T], default: T) -> T:
        value = self.data.get(name, default)
        return check_type(value, kind, join(self.key, name))

    def require(self, name: str, kind: type[T]) -> T:
        if name not in self.data:
            raise ConfigError(join(self.key, name), "is required")
        return check_type(self.data[name], kind, join(self.key, name))

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        key = join(self.key, name)
        given = self.data.get(name, default)
        value = as_number(given, key)
        if not value >= minimum:  # NaN too: max_age = nan would never find a date stale
            raise ConfigError(key, f"must be at least {minimum:g}" + got(key, given))
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self.get(name, str, default)
        if value not in options:
            allowed = " | ".join(options)
            raise ConfigError(join(self.key, name), f"must be one of {allowed}, not {value!r}")
        return value

    def one_of(self, name: str, file_key: str) -> None:
        """A value given inline and as a file: neither is silently preferred."""
        if name in self.data and file_key in self.data:
            raise ConfigError(
                join(self.key, name), f"is given both inline and as {file_key}: keep one"
            )

    def secret(self, name: str, *, required: bool = True) -> Secret | None:
        """A secret value, given inline or as ``<name>_file``."""
        file_key = f"{name}_file"
        self.one_of(name, file_key)
        if file_key in self.data:
            path = self.require(file_key, str)
            value = read_secret_file(path, join(self.key, file_key))
        elif name in self.data:
            value = self.require(name, str)
        elif required:
            raise ConfigError(join(self.key, name), "is required")
        else:
            return None
        if not value.strip():
            raise ConfigError(join(self.key, name), "is empty")
        return Secret(value)


def did_you_mean(name: str, names: Iterable[str]) -> str:
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


def got(key: str, value: Any) -> str:
    """``, got <value>`` for an error about ``key``'s value, unless the key is a secret's."""
    name = key.rsplit(".", 1)[-1].split("[", 1)[0]
    if name in SECRET_KEYS:
        return ""
    shown = repr(value)
    if len(shown) > SHOWN_AT_MOST:
        shown = shown[: SHOWN_AT_MOST - 3] + "..."
    return f", got {shown}"


def check_type(value: Any, kind: type[T], key: str) -> T:
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(key, "must be true or false" + got(key, value))
    if not isinstance(value, kind):
        raise ConfigError(key, f"must be a {_kind_name(kind)}" + got(key, value))
    return value


def _kind_name(kind: type[Any]) -> str:
    names = {str: "string", list: "list", dict: "table", bool: "boolean", int: "integer"}
    return names.get(kind, kind.__name__)


def as_number(value: Any, key: str) -> float:
    """A number, also accepted as a numeric string (values often come from ``${ENV}``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(key, "must be a number" + got(key, value))


def integer(table: Table, name: str, default: int, low: int, high: int) -> int:
    key = join(table.key, name)
    given = table.data.get(name, default)
    value = as_number(given, key)
    if not low <= value <= high or value != int(value):
        raise ConfigError(key, f"must be a whole number from {low} to {high}" + got(key, given))
    return int(value)


def read_secret_file(path: str, key: str) -> str:
    try:
        # utf-8-sig: a byte-order mark an editor put first is not part of the secret
        return Path(path).read_text(encoding="utf-8-sig").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(key, f"cannot read file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(key, f"file {path} is not UTF-8 text") from None


def http_url(t: Table, name: str) -> URL:
    text = t.require(name, str)
    url = no_userinfo(URL(text), join(t.key, name))
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(join(t.key, name), f"not a URL: {text!r}")
    if url.raw_fragment:  # never sent; after a query, it would hide what is appended
        raise ConfigError(join(t.key, name), "must not have a fragment (#...)")
    return url


def no_userinfo(url: URL, key: str) -> URL:
    """A URL with a user or password is refused: it would be shown wherever the URL
    is (``check``, every log line) and is never used. The message shows neither."""
    if url.raw_user is not None or url.raw_password is not None:
        raise ConfigError(key, "must not hold a user or password (user:password@)")
    return url


def networks(t: Table, name: str, default: list[str]) -> tuple[Network, ...]:
    """A list of CIDR networks (``10.0.0.0/8``; a bare address is one host)."""
    found = []
    for i, item in enumerate(t.get(name, list, default)):
        key = f"{t.key}.{name}[{i}]"
        try:
            found.append(ipaddress.ip_network(check_type(item, str, key), strict=False))
        except ValueError:
            raise ConfigError(key, f"not a CIDR network: {item!r}") from None
    return tuple(found)
