"""Properties of the two pure policies an attacker aims at: paths and headers (hypothesis).

Paths: ``normalise_path`` never leaves a dot segment, a doubled slash or an encoding
that hides one; it is idempotent, leaves clean paths alone and sees through noise; and
``Router.resolve`` only ever returns a route whose prefix covers the path however an
upstream resolves it (RFC 3986 dot removal on the raw path, with or without decoding
``%2e``/``%2f``/``%5c`` first) - otherwise it refuses.

Headers: no credential a client sends survives into an authenticated call, ours appear
exactly once, hop-by-hop and Connection-named fields never pass, and every other field
keeps its order and its repeats.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from yarl import URL

from proxy.config import AuthMode, Credentials, Route, Webhook
from proxy.errors import BadRequest, ProxyError
from proxy.headers import (
    NEVER_CONNECTION_NAMED,
    REQUEST_DROP,
    filtered,
    upstream_request_headers,
)
from proxy.routing import Router, normalise_path, under
from proxy.secret import Secret
from proxy.webhooks.deliver import delivery_url

PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
#: The router property is the one an attacker probes hardest: it gets more examples.
ROUTER_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=250)

# --------------------------------------------------------------------------- paths

CLEAN_SEGMENT = st.from_regex(r"[A-Za-z0-9_~-]{1,6}|%40|%2[1-9]|[a-z]\.[a-z]|\.{3}", fullmatch=True)
UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
DOTS = ["..", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "%2E%2E"]
DOT = [".", "%2e", "%2E"]
SEPARATORS = ["/", "%2f", "%2F", "\\", "%5c", "%5C"]
HIDDEN = re.compile(r"%(2[eEfF]|5[cC])")


def clean_path(segments: list[str]) -> str:
    return "/" + "/".join(segments)


@st.composite
def noisy_path(draw: st.DrawFn) -> tuple[str, str]:
    """A clean path, and the same path with dot segments and odd separators spliced in."""
    segments = draw(st.lists(CLEAN_SEGMENT, min_size=1, max_size=5))
    noisy = ""
    for segment in segments:
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["dot", "double", "detour"]))
            sep = draw(st.sampled_from(SEPARATORS))
            if kind == "dot":
                noisy += sep + draw(st.sampled_from(DOT))
            elif kind == "double":
                noisy += sep + draw(st.sampled_from(["", "/"]))
            else:
                noisy += sep + draw(CLEAN_SEGMENT) + draw(st.sampled_from(SEPARATORS))
                noisy += draw(st.sampled_from(DOTS))
        first = not noisy
        noisy += ("/" if first else draw(st.sampled_from(SEPARATORS))) + draw(encoded(segment))
    return clean_path(segments), noisy


@st.composite
def encoded(draw: st.DrawFn, text: str) -> str:
    """``text`` with any of its unreserved characters percent-encoded, hex in any case."""
    out = ""
    for char in text:
        if char in UNRESERVED and draw(st.booleans()):
            out += draw(st.sampled_from(["%{:02x}", "%{:02X}"])).format(ord(char))
        else:
            out += char
    return out


#: Segments with ``;`` parameters: to servlet-style servers ``..;x`` is ``..``.
PARAMETERS = ["..;", "..;x=1", "%2e%2e;", ".;", "a;p", "b;.."]
PIECES = st.sampled_from([*DOTS, *DOT, *PARAMETERS, "", "a", "b", "ab", "x", "%41", "..."])


@st.composite
def any_path(draw: st.DrawFn) -> str:
    """A path of clean, dotted and empty segments joined by any separator, maybe a query."""
    pieces = draw(st.lists(PIECES, min_size=1, max_size=8))
    path = ""
    for piece in pieces:
        path += ("/" if not path else draw(st.sampled_from(SEPARATORS))) + piece
    if draw(st.booleans()):
        path += "?" + draw(st.text(st.sampled_from("ab./%2e&=?#"), max_size=8))
    return path


def segments_of(path: str) -> list[str]:
    return path.split("?", 1)[0].split("/")[1:]


@PROPERTY_SETTINGS
@given(any_path())
def test_a_normalised_path_has_no_dot_segments_doubled_slashes_or_hiding_encodings(
    raw: str,
) -> None:
    """Whatever comes in, what comes out is a plain absolute path, or a refusal."""
    try:
        normal = normalise_path(raw)
    except BadRequest:
        return
    assert normal.startswith("/")
    assert "//" not in normal
    assert "\\" not in normal
    assert "?" not in normal
    assert HIDDEN.search(normal) is None
    assert not {".", ".."} & {segment.split(";", 1)[0] for segment in segments_of(normal)}


@PROPERTY_SETTINGS
@given(any_path())
def test_normalising_twice_changes_nothing(raw: str) -> None:
    """normalise(normalise(p)) == normalise(p)."""
    try:
        normal = normalise_path(raw)
    except BadRequest:
        return
    assert normalise_path(normal) == normal


@PROPERTY_SETTINGS
@given(st.lists(CLEAN_SEGMENT, min_size=1, max_size=6))
def test_a_clean_path_is_its_own_normal_form(segments: list[str]) -> None:
    """A path without dots, doubled or hidden separators comes out byte for byte."""
    path = clean_path(segments)
    assert normalise_path(path) == path


@PROPERTY_SETTINGS
@given(noisy_path())
@example(("/b/x", "/a/../b/x"))
@example(("/b/x", "/a/%2E%2e%2fb/x"))
@example(("/b/x", "/a/..%2fb/x"))
@example(("/b/x", "/a\\..\\b/x"))
def test_dot_segments_and_odd_separators_in_any_encoding_are_seen_through(
    paths: tuple[str, str],
) -> None:
    """Splicing ``.``, ``x/..`` or ``//`` into a path, encoded or not, changes nothing."""
    clean, noisy = paths
    assert normalise_path(noisy) == clean


@PROPERTY_SETTINGS
@given(
    st.lists(CLEAN_SEGMENT, max_size=4),
    st.sampled_from(DOTS),
    st.sampled_from(SEPARATORS),
    st.integers(1, 3),
)
def test_climbing_above_the_root_is_refused(
    segments: list[str], dots: str, sep: str, extra: int
) -> None:
    """More ``..`` than segments before them, in any spelling: BadRequest, never a path."""
    climb = "".join(sep + dots for _ in range(len(segments) + extra))
    with pytest.raises(BadRequest):
        normalise_path(clean_path(segments).rstrip("/") + climb + "/x")


@PROPERTY_SETTINGS
@given(any_path(), st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12))
def test_the_query_never_changes_the_normal_form(raw: str, query: str) -> None:
    """Anything after ``?`` is not path: it neither climbs nor hides a segment."""
    path = raw.split("?", 1)[0]
    try:
        expected = normalise_path(path)
    except BadRequest:
        with pytest.raises(BadRequest):
            normalise_path(f"{path}?{query}")
        return
    assert normalise_path(f"{path}?{query}") == expected


# ----- the router, against independent readings of the path an upstream might take


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, literally: what a standard server resolves (empty segments kept)."""
    source, output = path, ""
    while source:
        if source.startswith("../"):
            source = source[3:]
        elif source.startswith(("./", "/./")):
            source = source[2:]
        elif source == "/.":
            source = "/"
        elif source.startswith("/../") or source == "/..":
            source = "/" + source[4:] if source.startswith("/../") else "/"
            output = output[: output.rfind("/")] if "/" in output else ""
        elif source in (".", ".."):
            source = ""
        else:
            start = 1 if source.startswith("/") else 0
            end = source.find("/", start)
            end = len(source) if end < 0 else end
            output += source[:end]
            source = source[end:]
    return output or "/"


def decoded(path: str) -> str:
    """The path with ``%2e``, ``%2f``, ``%5c`` decoded and backslashes as slashes."""
    table = {"2e": ".", "2f": "/", "5c": "/"}
    return HIDDEN.sub(lambda m: table[m.group(1).lower()], path).replace("\\", "/")


def without_parameters(path: str) -> str:
    """Each segment cut at its first ``;``, as servlet containers do before resolving."""
    return "/".join(segment.split(";", 1)[0] for segment in path.split("/"))


def unreserved_decoded(path: str) -> str:
    """RFC 3986 §6.2.2.2: ``%XX`` of an unreserved character is that character."""

    def one(match: re.Match[str]) -> str:
        char = bytes.fromhex(match.group(1)).decode("latin-1")
        return char if char in UNRESERVED else match.group(0)

    return re.sub("%([0-9A-Fa-f]{2})", one, path)


#: How an upstream might read the raw path it is sent; every one of them decodes
#: unreserved characters first, as Vipps' gateway does.
READINGS: dict[str, Callable[[str], str]] = {
    "rfc3986 on the raw path": lambda path: remove_dot_segments(unreserved_decoded(path)),
    "rfc3986 after decoding": lambda path: remove_dot_segments(decoded(unreserved_decoded(path))),
    "servlet: parameters cut, decoded, rfc3986": lambda path: remove_dot_segments(
        decoded(without_parameters(unreserved_decoded(path)))
    ),
}


def covers(prefix: str, path: str) -> bool:
    """The prefix covers the path, letters compared without case (as Vipps does)."""
    lower = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
    return under(path.translate(lower), prefix.translate(lower))


PREFIX_SEGMENT = st.sampled_from(["a", "b", "ab", "x"])
PREFIX = st.lists(PREFIX_SEGMENT, max_size=3).flatmap(
    lambda segs: st.sampled_from(["/" + "/".join(segs), "/" + "/".join(segs) + "/"])
)


def make_routes(prefixes: list[str]) -> list[Route]:
    upstream = URL("https://api.vipps.test")
    return [Route(prefix, upstream, ("main",)) for prefix in prefixes]


def resolved_or_refused(router: Router, raw: str) -> Route | ProxyError:
    try:
        return router.resolve(raw)
    except ProxyError as refused:
        return refused


def longest(routes: list[Route], path: str) -> Route | None:
    covering = [r for r in routes if covers(r.prefix, path)]
    return max(covering, key=lambda r: len(r.prefix.rstrip("/")), default=None)


@ROUTER_SETTINGS
@given(st.lists(PREFIX, min_size=1, max_size=4, unique_by=lambda p: p.rstrip("/")), any_path())
@example(["/a", "/b"], "/a/../b/x")
@example(["/a", "/b"], "/a//../b")
@example(["/a", "/"], "/a/%2e%2e%2fx")
@example(["/a/b", "/a"], "/a/b/..%5cx")
@example(["/a", "/b"], "/a/..;/b")
@example(["/a", "/"], "/%41/x")
@example(["/ab", "/a"], "/A%42/x")
def test_a_resolved_route_covers_the_path_however_the_upstream_reads_it(
    prefixes: list[str], raw: str
) -> None:
    """resolve() refuses (400/404) or returns the route of the normalised path, and the
    prefix of that route covers the raw path as every reading in READINGS resolves it."""
    routes = make_routes(prefixes)
    route = resolved_or_refused(Router(routes), raw)
    if isinstance(route, ProxyError):
        assert route.status in (400, 404)
        return
    path = raw.split("?", 1)[0]
    normal = normalise_path(path)
    assert route is longest(routes, normal)
    assert covers(route.prefix, normal)
    for name, reading in READINGS.items():
        resolved = reading(path)
        assert covers(route.prefix, resolved), f"{name}: {resolved} is outside {route.prefix}"


@st.composite
def any_case_and_encoding(draw: st.DrawFn, text: str) -> str:
    """``text`` with each letter in either case, then unreserved characters encoded."""
    cased = "".join(draw(st.sampled_from([c.lower(), c.upper()])) for c in text)
    return draw(encoded(cased))


SPELLED_PREFIXES = ["/epayment/", "/recurring/", "/vipps-userinfo-api/", "/accesstoken"]


@ROUTER_SETTINGS
@given(
    st.sampled_from(SPELLED_PREFIXES).flatmap(
        lambda prefix: st.tuples(st.just(prefix), any_case_and_encoding(prefix))
    ),
    st.from_regex(r"(/[a-z0-9]{1,5}){0,3}(\?[a-z=&;]{0,6})?", fullmatch=True),
)
@example(("/epayment/", "/epaymen%74/"), "/v1/payments/x")
@example(("/epayment/", "/%65payment/"), "/v1/payments/x")
@example(("/recurring/", "/Recurring/"), "/v3/agreements")
def test_any_spelling_of_a_route_prefix_gets_that_route(
    spelled: tuple[str, str], rest: str
) -> None:
    """Letters in any case, unreserved characters percent-encoded: the route is the one
    whose prefix Vipps reads, never the catch-all ``/``."""
    prefix, spelling = spelled
    routes = make_routes([*SPELLED_PREFIXES, "/"])
    route = Router(routes).resolve(spelling.rstrip("/") + (rest or "/"))
    assert route.prefix == prefix


@PROPERTY_SETTINGS
@given(
    st.sampled_from(["http://", "https://", "", "*", "evil.test:443"]),
    st.from_regex(r"[a-z0-9.:]{0,12}(/[a-z]{0,4}){0,3}", fullmatch=True),
)
def test_only_origin_form_targets_resolve(start: str, rest: str) -> None:
    """A target that is not ``/path`` (absolute, authority, ``*``) is refused."""
    target = start + rest
    if target.startswith("/"):
        return
    with pytest.raises(ProxyError):
        Router(make_routes(["/"])).resolve(target)


@PROPERTY_SETTINGS
@given(any_path(), st.text(st.sampled_from("ab/.%2e#"), max_size=10))
@example("/a/x", "/../../b")
def test_a_target_with_a_fragment_never_resolves(raw: str, tail: str) -> None:
    """``#`` is not allowed in a request target; the upstream would read it as path."""
    router = Router(make_routes(["/a", "/b", "/"]))
    with pytest.raises(ProxyError):
        router.resolve(raw.split("?", 1)[0] + "#" + tail)


# --------------------------------------------------------------------------- headers

CREDENTIAL_NAMES = [
    "Authorization",
    "Ocp-Apim-Subscription-Key",
    "client_id",
    "client_secret",
    "Proxy-Authorization",
]
HOP_BY_HOP = [
    "Connection",
    "Keep-Alive",
    "Proxy-Connection",
    "Proxy-Authenticate",
    "TE",
    "Trailer",
    "Transfer-Encoding",
    "Upgrade",
]
DROPPED_ALWAYS = {
    n.lower() for n in [*HOP_BY_HOP, "Proxy-Authorization", "Host", "Content-Length", "Expect"]
}
CREDENTIALS = {n.lower() for n in CREDENTIAL_NAMES}
MSN = "merchant-serial-number"
SYSTEM = "vipps-system-name"
OUR_TOKEN = "our-token-value"
OURS = Credentials(
    name="main",
    token_url=URL("https://api.vipps.test/accesstoken/get"),
    token_style="accesstoken",
    client_id=Secret("our-client-id"),
    client_secret=Secret("our-client-secret"),
    subscription_key=Secret("our-subscription-key"),
    system_headers=(("Vipps-System-Name", "our-system"),),
)


@st.composite
def any_case(draw: st.DrawFn, names: list[str]) -> str:
    """One of ``names``, each letter upper or lower case at random."""
    name = draw(st.sampled_from(names))
    mask = draw(st.integers(0, 2 ** len(name) - 1))
    return "".join(c.upper() if mask >> i & 1 else c.lower() for i, c in enumerate(name))


VALUE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=16)
OTHER_NAME = st.one_of(
    st.sampled_from(["Accept", "X-Request-Id", "Idempotency-Key", "Content-Type", "X-A"]),
    st.text(st.sampled_from("abcXYZ019-_"), min_size=1, max_size=8),
)
POLICY_NAME = any_case(
    [
        *CREDENTIAL_NAMES,
        *HOP_BY_HOP,
        "Host",
        "Content-Length",
        "Expect",
        "Merchant-Serial-Number",
        SYSTEM,
    ]
)


@st.composite
def client_headers(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Headers in any order with repeats: ordinary ones, ours to replace, hop-by-hop ones,
    and Connection fields naming some of them. Credential values are all marked."""
    names = draw(st.lists(st.one_of(OTHER_NAME, POLICY_NAME), max_size=12))
    headers = []
    for name in names:
        if name.lower() in CREDENTIALS:
            headers.append((name, "client-cred-" + draw(VALUE)))
        elif name.lower() == "connection":
            named = draw(st.lists(st.sampled_from([*names, "close", "keep-alive"]), max_size=3))
            headers.append((name, ", ".join(named)))
        else:
            headers.append((name, draw(VALUE)))
    return headers


def connection_named(headers: list[tuple[str, str]]) -> set[str]:
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }


def kept(headers: list[tuple[str, str]], drop: set[str]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() not in drop]


@PROPERTY_SETTINGS
@given(client_headers(), st.sets(st.sampled_from([*DROPPED_ALWAYS, *CREDENTIALS, "x-a"])))
def test_filtering_keeps_every_other_header_in_order_with_repeats(
    headers: list[tuple[str, str]], drop: set[str]
) -> None:
    """``filtered`` removes exactly the dropped and Connection-named names, nothing else;
    a Connection option never names away the framing or Host."""
    expected = kept(headers, drop | connection_named(headers) - NEVER_CONNECTION_NAMED)
    assert filtered(headers, frozenset(drop)) == expected


def test_a_connection_field_naming_every_dropped_field_and_one_more_drops_that_one() -> None:
    """A Connection option is dropped even when the same field also names all that is
    dropped anyway: naming more than the drop set is not naming nothing new."""
    named = ", ".join([*sorted(REQUEST_DROP), "x-hop"])
    headers = [("Connection", named), ("X-Hop", "1"), ("X-Kept", "2")]
    assert filtered(headers, REQUEST_DROP) == [("X-Kept", "2")]


@PROPERTY_SETTINGS
@given(
    client_headers(),
    st.sampled_from(["bearer", "client-credentials"]),
    st.booleans(),
    st.sampled_from(["", "123456"]),
)
def test_no_client_credential_survives_into_an_authenticated_call(
    headers: list[tuple[str, str]], auth: AuthMode, subscription_key: bool, msn: str
) -> None:
    """Every credential header the client sent is gone; ours are there exactly once."""
    route = Route("/", URL("https://api.vipps.test"), ("main",), auth, subscription_key)
    creds = Credentials(**{**OURS.__dict__, "merchant_serial_number": msn})
    token = OUR_TOKEN if auth == "bearer" else None
    out = upstream_request_headers(headers, route, creds, token)

    assert not [v for v in out.values() if v.startswith("client-cred-")]
    assert not DROPPED_ALWAYS & {k.lower() for k in out}
    if auth == "bearer":
        assert out.getall("Authorization") == [f"Bearer {OUR_TOKEN}"]
        assert "client_id" not in out
        assert "client_secret" not in out
    else:
        assert "Authorization" not in out
        assert out.getall("client_id") == ["our-client-id"]
        assert out.getall("client_secret") == ["our-client-secret"]
    wanted_key = ["our-subscription-key"] if subscription_key else []
    assert out.getall("Ocp-Apim-Subscription-Key", []) == wanted_key
    if msn:
        assert out.getall("Merchant-Serial-Number") == [msn]


@PROPERTY_SETTINGS
@given(client_headers(), st.sampled_from(["bearer", "client-credentials", "none"]))
def test_every_other_client_header_passes_in_order_with_repeats(
    headers: list[tuple[str, str]], auth: AuthMode
) -> None:
    """What the policy does not touch arrives upstream as sent: order, repeats, values."""
    route = Route("/", URL("https://api.vipps.test"), ("main",) if auth != "none" else (), auth)
    creds = OURS if auth != "none" else None
    token = OUR_TOKEN if auth == "bearer" else None
    out = upstream_request_headers(headers, route, creds, token)
    untouched = DROPPED_ALWAYS | CREDENTIALS | {MSN, SYSTEM} | connection_named(headers)
    if auth == "none":
        untouched = DROPPED_ALWAYS | connection_named(headers)
    assert kept(list(out.items()), untouched) == kept(headers, untouched)


@PROPERTY_SETTINGS
@given(client_headers())
def test_a_pass_through_route_drops_only_hop_by_hop_fields(
    headers: list[tuple[str, str]],
) -> None:
    """``auth = none`` (Login): the client's own Authorization passes, its proxy key never."""
    route = Route("/", URL("https://api.vipps.test"), (), "none")
    out = upstream_request_headers(headers, route, None, None)
    assert list(out.items()) == kept(headers, DROPPED_ALWAYS | connection_named(headers))
    assert "Proxy-Authorization" not in out


@PROPERTY_SETTINGS
@given(client_headers())
def test_system_headers_are_defaults_the_client_can_override(
    headers: list[tuple[str, str]],
) -> None:
    """Ours appear once when the client sent none or only blanks; else the client's stay."""
    route = Route("/", URL("https://api.vipps.test"), ("main",))
    out = upstream_request_headers(headers, route, OURS, OUR_TOKEN)
    sent = [v for k, v in kept(headers, connection_named(headers)) if k.lower() == SYSTEM]
    expected = sent if any(v.strip() for v in sent) else ["our-system"]
    assert out.getall("Vipps-System-Name") == expected


def test_properties_use_a_real_multidict() -> None:
    """The header policy returns a case-insensitive multidict, as aiohttp's client takes."""
    route = Route("/", URL("https://api.vipps.test"), ("main",))
    assert isinstance(upstream_request_headers([], route, OURS, OUR_TOKEN), CIMultiDict)


def test_a_letter_that_lowers_to_ascii_is_not_that_ascii_letter() -> None:
    """Prefixes match ASCII letters in any case and nothing else: the Kelvin sign
    (U+212A), which ``str.lower()`` makes ``k``, does not reach the ``/key`` route."""
    router = Router(make_routes(["/key", "/"]))
    assert router.resolve("/\u212aey/x").prefix == "/"
    assert router.resolve("/KEY/x").prefix == "/key"


#: Segments of a callback path past the prefix (dot segments are refused before this).
CALLBACK_SEGMENT = st.text(
    alphabet=string.ascii_letters + string.digits + "-._~", min_size=1
).filter(lambda segment: segment not in {".", ".."})
APP_QUERY = st.sampled_from(["", "app_key=k-1", "a=1&b=%2F"])
#: What an unsigned sender may add: nothing, its own parameters, or deliver_to's names.
RECEIVED_QUERY = st.lists(
    st.sampled_from(["x=1", "app_key=evil", "app%5Fkey=evil", "a", "b=2", ""]), max_size=3
).map("&".join)


@PROPERTY_SETTINGS
@given(
    st.sampled_from(["", "/", "/cb", "/cb/", "/a/b"]),
    APP_QUERY,
    st.lists(CALLBACK_SEGMENT, min_size=1, max_size=4),
    RECEIVED_QUERY,
)
def test_a_callback_is_delivered_below_deliver_to_with_its_query_first(
    base: str, query: str, segments: list[str], received: str
) -> None:
    """yarl, not our code, reads the delivery URL back: its path is deliver_to's path
    with the rest of the callback path below it; its query starts with deliver_to's
    whole, and no received parameter names one of deliver_to's."""
    deliver_to = URL(f"http://127.0.0.1:9{base}" + (f"?{query}" if query else ""))
    hook = Webhook("/ecom", "ecom-callback", deliver_to)
    rest = "/" + "/".join(segments)
    url = URL(str(delivery_url(hook, "/ecom" + rest + (f"?{received}" if received else ""))))
    assert url.raw_path == base.rstrip("/") + rest
    own = deliver_to.raw_query_string
    assert url.raw_query_string.startswith(own)
    added = url.raw_query_string[len(own) :].lstrip("&")
    assert not set(URL("/?" + added).query) & set(deliver_to.query)
    assert (url.host, url.port) == ("127.0.0.1", 9)
