"""Choosing a route: normalise the path, take the longest prefix, pick credentials.

The route is chosen on the path as the upstream reads it; what goes upstream is the
client's raw path, byte for byte. Normalising decodes percent-encoded unreserved
characters (RFC 3986 §6.2.2.2: ``/epaymen%74`` is ``/epayment``), the encodings that
can hide a climb (``%2f``, ``%5c``, backslashes), folds doubled slashes and resolves
dot segments; prefixes match case-insensitively (``/Recurring`` is ``/recurring``), as
Vipps' gateway matches them. A ``;`` in the path is refused (Vipps' APIs have no path
parameters, and servlet-style servers drop what follows one). A path that climbs above
the root, or whose raw form would fall under another route than its normalised form,
is refused: ``/a/../b`` never borrows route ``a``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from proxy.config import Credentials, Route
from proxy.errors import BadRequest, Forbidden, NotFound

_ENCODED: Final = re.compile(r"%([0-9A-Fa-f]{2})")
#: ``%xx`` (lower-case hex) of each unreserved character, and the character.
_UNRESERVED: Final = {f"{ord(c):02x}": c for c in string.ascii_letters + string.digits + "-._~"}
#: What normalising decodes, in one pass (a decoded ``%`` never starts another escape).
_NORMAL: Final = {**_UNRESERVED, "2f": "/", "5c": "/"}
#: Lower-cases ASCII letters only: ``str.lower`` maps the Kelvin sign to ``k``.
_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def normalise_path(raw_path: str) -> str:
    """The path as a server would resolve it; raises BadRequest if it climbs above /
    or has a ``;``."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    if _plain(path):
        return path
    if ";" in path:
        raise BadRequest("a path must not contain ';'", reason="path_parameter")
    path = _ENCODED.sub(_decoder(_NORMAL), path).replace("\\", "/")
    out: list[str] = []
    segments = path.split("/")
    for segment in segments[1:]:
        if segment == "..":
            if not out:
                raise BadRequest("the path climbs above the root", reason="path_traversal")
            out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    trailing = "/" if segments[-1] in ("", ".", "..") and out else ""
    return "/" + "/".join(out) + trailing


def refuse_fragment(raw_path: str) -> None:
    """A BadRequest for a target with ``#``: aiohttp takes one, and whatever follows it
    (a query the proxy appends to, say) would be cut from what is sent on."""
    if "#" in raw_path:
        raise BadRequest("a request target must not carry a fragment", reason="target")


def decode_unreserved(path: str) -> str:
    """Percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2), nothing else."""
    return _ENCODED.sub(_decoder(_UNRESERVED), path) if "%" in path else path


def _decoder(table: dict[str, str]) -> Callable[[re.Match[str]], str]:
    """A substitution for ``_ENCODED`` that decodes what ``table`` holds."""
    return lambda match: table.get(match.group(1).lower(), match.group(0))


def fold_case(path: str) -> str:
    """ASCII letters lower-cased, every other character kept."""
    return path.lower() if path.isascii() else path.translate(_ASCII_LOWER)


def _plain(path: str) -> bool:
    """A path that is its own normal form: no encoding to decode, no empty or dot
    segment, no parameters, no backslash. Most calls take this shortcut."""
    return (
        path.startswith("/")
        and "%" not in path
        and "//" not in path
        and "/." not in path
        and ";" not in path
        and "\\" not in path
    )


def under(path: str, prefix: str) -> bool:
    """True if ``path`` is ``prefix`` or below it, on a segment boundary. Both start
    with "/": the router matches only origin-form paths, and so is every prefix."""
    base = prefix.rstrip("/")
    return path == base or path.startswith(base + "/")


class Router:
    """Longest-prefix match over the configured routes."""

    def __init__(self, routes: Iterable[Route]) -> None:
        ordered = sorted(routes, key=lambda r: len(r.prefix.rstrip("/")), reverse=True)
        self._routes = [(fold_case(route.prefix), route) for route in ordered]

    def match(self, path: str) -> Route | None:
        """The route of the longest prefix covering ``path``, in any letter case."""
        folded = fold_case(path)
        for prefix, route in self._routes:
            if under(folded, prefix):
                return route
        return None

    def resolve(self, raw_path: str) -> Route:
        """The route for a request's raw path, or a ProxyError."""
        return self.route(raw_path, self.normal(raw_path))

    @staticmethod
    def normal(raw_path: str) -> str:
        """The normal form of a request target's path, or a BadRequest."""
        if not raw_path.startswith("/"):
            raise BadRequest("only origin-form request targets are accepted", reason="target")
        refuse_fragment(raw_path)
        return normalise_path(raw_path)

    def route(self, raw_path: str, normal: str) -> Route:
        """The route for a raw path whose normal form is ``normal``, or a ProxyError."""
        route = self.match(normal)
        if route is None:
            raise NotFound(f"no route for path {normal}", reason="no_route")
        if normal == raw_path:  # most calls: a plain path without a query
            return route
        plain = raw_path.split("?", 1)[0]
        if normal != plain and self.match(decode_unreserved(plain)) is not route:
            raise BadRequest(
                "the path leaves the prefix of the route it names", reason="path_traversal"
            )
        return route


def pick_credentials(
    route: Route, credentials: Mapping[str, Credentials], msn: str | None
) -> Credentials | None:
    """The credential set for a call: by the client's Merchant-Serial-Number if several;
    without one, the route's ``default_credentials`` or a BadRequest (never a guess)."""
    if not route.credentials:
        return None
    if len(route.credentials) == 1:
        return credentials[route.credentials[0]]
    if not msn or not msn.strip():
        if route.default_credentials:
            return credentials[route.default_credentials]
        raise BadRequest(
            "this route serves several sales units: send Merchant-Serial-Number",
            reason="missing_msn",
        )
    for name in route.credentials:
        if credentials[name].merchant_serial_number == msn.strip():
            return credentials[name]
    shown = msn.strip()[:20]
    raise Forbidden(
        f"merchant serial number {shown!r} is not served by this route", reason="unknown_msn"
    )
