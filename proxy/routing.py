"""Choosing a route: normalise the path, take the longest prefix, pick credentials.

The path is only *examined* in normalised form; what goes upstream is the client's raw
path, byte for byte. Normalising decodes the encodings that can hide a climb
(``%2e``, ``%2f``, ``%5c``, backslashes), folds doubled slashes and resolves dot
segments. A path that climbs above the root, or whose raw form would fall under another
route than its normalised form, is refused: ``/a/../b`` never borrows route ``a``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from proxy.config import Credentials, Route
from proxy.errors import BadRequest, Forbidden, NotFound

_HIDDEN: Final = re.compile(r"%(2[eEfF]|5[cC])")
_DECODE: Final = {"2e": ".", "2f": "/", "5c": "/"}


def normalise_path(raw_path: str) -> str:
    """The path as a server would resolve it; raises BadRequest if it climbs above /."""
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    if _plain(path):
        return path
    path = _HIDDEN.sub(lambda m: _DECODE[m.group(1).lower()], path).replace("\\", "/")
    out: list[str] = []
    segments = path.split("/")
    for raw_segment in segments[1:]:
        # `..;x` is a dot segment to servlet-style upstreams: judge it without parameters.
        segment = raw_segment.split(";", 1)[0]
        if segment == "..":
            if not out:
                raise BadRequest("the path climbs above the root", reason="path_traversal")
            out.pop()
        elif segment not in (".", ""):
            out.append(raw_segment)
    last = segments[-1].split(";", 1)[0]
    trailing = "/" if last in ("", ".", "..") and out else ""
    return "/" + "/".join(out) + trailing


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
    """True if ``path`` is ``prefix`` or below it, on a segment boundary."""
    if prefix == "/" or path == prefix:
        return True
    base = prefix.rstrip("/")
    return path.startswith(base + "/") or path == base


class Router:
    """Longest-prefix match over the configured routes."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = sorted(routes, key=lambda r: len(r.prefix.rstrip("/")), reverse=True)

    def match(self, path: str) -> Route | None:
        for route in self._routes:
            if under(path, route.prefix):
                return route
        return None

    def resolve(self, raw_path: str) -> Route:
        """The route for a request's raw path, or a ProxyError."""
        if not raw_path.startswith("/"):
            raise BadRequest("only origin-form request targets are accepted", reason="target")
        if "#" in raw_path:
            raise BadRequest("a request target must not carry a fragment", reason="target")
        plain = raw_path.split("?", 1)[0]
        normal = normalise_path(plain)
        route = self.match(normal)
        if route is None:
            raise NotFound(f"no route for path {normal}", reason="no_route")
        if normal != plain and self.match(plain) is not route:
            raise BadRequest(
                "the path leaves the prefix of the route it names", reason="path_traversal"
            )
        return route


def pick_credentials(
    route: Route, credentials: Mapping[str, Credentials], msn: str | None
) -> Credentials | None:
    """The credential set for a call: by the client's Merchant-Serial-Number if several."""
    if not route.credentials:
        return None
    if len(route.credentials) == 1 or not msn:
        return credentials[route.credentials[0]]
    for name in route.credentials:
        if credentials[name].merchant_serial_number == msn.strip():
            return credentials[name]
    shown = msn.strip()[:20]
    raise Forbidden(
        f"merchant serial number {shown!r} is not served by this route", reason="unknown_msn"
    )
