"""Vipps' webhook signature, checked exactly: the published test vector, and any change
to a signed event refused."""

from __future__ import annotations

import base64
from email.utils import formatdate, parsedate_to_datetime

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.secret import Secret
from proxy.webhooks.verify import SignatureError, sign_headers, signed_target, verify
from tests.webhook_peers import vipps_headers

# Vipps' own worked example (Webhooks API, "Request authentication"), copied verbatim.
VECTOR_SECRET = (
    "A0+AeKBRG2KRGvnNwJpQlb6IJFk48CKXCIcrLoHncVJKDILsQSxS6NWCccwWm6r6FhGKhiHTBsG2wo/xU6FY/A=="
)
VECTOR_URL = "https://webhook.site/e2cee29b-012e-4f1d-8ef4-e95fd74a7a63"
VECTOR_BODY = b'{"some-unique-content":"ee6e441b-cc4a-46f8-895d-a5af79bcc233/hello-world"}'
VECTOR_DATE = "Thu, 30 Mar 2023 08:38:32 GMT"
VECTOR_HASH = "lNlsp1XA03N34HrQsVzPgJKtC+r7l/RBF4V3JQUWMj4="
VECTOR_AUTHORIZATION = (
    "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
    "&Signature=agAiSyogQbDHpeucoNwYz+yAr5nJ+v+zasdkSbqzv+U="
)
VECTOR_NOW = parsedate_to_datetime(VECTOR_DATE).timestamp()
HOST, PATH = "127.0.0.1:8080", "/webhooks/vipps"
SECRET = Secret("a-test-secret")


def headers(values: dict[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(values))


def vector_headers() -> dict[str, str]:
    return {
        "x-ms-date": VECTOR_DATE,
        "x-ms-content-sha256": VECTOR_HASH,
        "Authorization": VECTOR_AUTHORIZATION,
    }


def check(
    given_headers: dict[str, str],
    body: bytes,
    *,
    host: str = HOST,
    target: str = PATH,
    now: float | None = None,
    secret: Secret = SECRET,
) -> None:
    when = parsedate_to_datetime(given_headers.get("x-ms-date", VECTOR_DATE)).timestamp()
    verify(
        secret,
        headers(given_headers),
        body,
        method="POST",
        host=host,
        path_and_query=target,
        max_age=300,
        now=when if now is None else now,
    )


def test_vipps_published_test_vector_verifies() -> None:
    """The exact values of Vipps' example pass: same hash, same string, same signature."""
    verify(
        Secret(VECTOR_SECRET),
        headers(vector_headers()),
        VECTOR_BODY,
        method="POST",
        host="webhook.site",
        path_and_query="/e2cee29b-012e-4f1d-8ef4-e95fd74a7a63",
        max_age=300,
        now=VECTOR_NOW,
    )


def test_signing_reproduces_vipps_test_vector() -> None:
    """Headers made here (the emulator's) are byte for byte those of Vipps' example."""
    made = sign_headers(Secret(VECTOR_SECRET), URL(VECTOR_URL), VECTOR_BODY, VECTOR_DATE)
    assert made == vector_headers()


def test_the_test_signer_agrees_with_vipps_test_vector() -> None:
    """The tests' own signer (tests/webhook_peers.py) is right too."""
    made = vipps_headers(
        VECTOR_BODY,
        "webhook.site",
        "/e2cee29b-012e-4f1d-8ef4-e95fd74a7a63",
        secret=VECTOR_SECRET,
        date=VECTOR_DATE,
    )
    assert made["Authorization"] == VECTOR_AUTHORIZATION
    assert made["x-ms-content-sha256"] == VECTOR_HASH


def test_the_secret_is_used_as_text_not_base64_decoded() -> None:
    """A verifier that decoded the secret would reject Vipps' vector; ours must not,
    and the decoded key must not pass."""
    decoded = base64.b64decode(VECTOR_SECRET).decode("latin-1")
    with pytest.raises(SignatureError) as err:
        verify(
            Secret(decoded),
            headers(vector_headers()),
            VECTOR_BODY,
            method="POST",
            host="webhook.site",
            path_and_query="/e2cee29b-012e-4f1d-8ef4-e95fd74a7a63",
            max_age=300,
            now=VECTOR_NOW,
        )
    assert err.value.reason == "bad_signature"


BODY = b'{"reference":"order-1","name":"AUTHORIZED"}'
DATE = formatdate(1_800_000_000, usegmt=True)


def signed() -> dict[str, str]:
    return vipps_headers(BODY, HOST, PATH, secret="a-test-secret", date=DATE)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_other_body_is_refused(other: bytes) -> None:
    """Whatever the body becomes, the unchanged headers no longer fit it."""
    if other == BODY:
        return
    with pytest.raises(SignatureError) as err:
        check(signed(), other)
    assert err.value.reason == "hash_mismatch"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=60))
def test_a_body_rehashed_without_the_secret_is_refused(other: bytes) -> None:
    """An attacker who fixes x-ms-content-sha256 for a new body still has no signature."""
    forged = {**signed(), **vipps_headers(other, HOST, PATH, secret="guess", date=DATE)}
    forged["Authorization"] = signed()["Authorization"]
    with pytest.raises(SignatureError) as err:
        check(forged, other)
    assert err.value.reason == "bad_signature"


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["host", "target", "date", "signature", "secret"]),
    st.text(min_size=1, max_size=30),
)
@example("signature", " ")
@example("signature", "&")
def test_any_change_to_what_is_signed_is_refused(part: str, noise: str) -> None:
    """Another host, path, query, date, signature or secret: refused."""
    given_headers = signed()
    host, target, secret = HOST, PATH, SECRET
    if part == "host":
        host = HOST + noise
    elif part == "target":
        target = PATH + "?" + noise
    elif part == "date":
        given_headers["x-ms-date"] = formatdate(1_800_000_000 + len(noise), usegmt=True)
    elif part == "signature":  # trailing blanks are no change: HTTP strips them
        given_headers["Authorization"] += noise.rstrip() or "x"
    else:
        secret = Secret("a-test-secret" + noise)
    with pytest.raises(SignatureError):
        check(given_headers, BODY, host=host, target=target, secret=secret, now=1_800_000_000)


def test_the_unchanged_event_passes() -> None:
    """The control for the refusals above: the event as signed is accepted."""
    check(signed(), BODY)


@pytest.mark.parametrize("missing", ["x-ms-date", "x-ms-content-sha256", "Authorization"])
def test_a_missing_signature_header_is_refused(missing: str) -> None:
    given_headers = signed()
    del given_headers[missing]
    with pytest.raises(SignatureError) as err:
        check(given_headers, BODY, now=1_800_000_000)
    assert err.value.reason == "missing_signature"


@pytest.mark.parametrize(
    "value",
    [
        "Bearer abc",
        "HMAC-SHA256 Signature=abc",
        "HMAC-SHA256 SignedHeaders=host;x-ms-date;x-ms-content-sha256&Signature=x",
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=x&Signature=y",
        "HMAC-SHA256 Signature=x&SignedHeaders=x-ms-date;host;x-ms-content-sha256",
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256;x-more&Signature=x",
        "HMAC-SHA256 SignedHeaders=x-ms-date;x-ms-content-sha256&Signature=x",
    ],
)
def test_an_authorization_of_another_shape_is_refused(value: str) -> None:
    given_headers = {**signed(), "Authorization": value}
    with pytest.raises(SignatureError) as err:
        check(given_headers, BODY)
    assert err.value.reason == "missing_signature"


@pytest.mark.parametrize("offset", [-301, 301, -86400, 86400])
def test_a_date_outside_max_age_is_refused(offset: int) -> None:
    """Stale or from the future by more than max_age (300 s): refused, though signed."""
    with pytest.raises(SignatureError) as err:
        check(signed(), BODY, now=1_800_000_000 - offset)
    assert err.value.reason == "stale_date"


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_a_date_within_max_age_passes(offset: int) -> None:
    check(signed(), BODY, now=1_800_000_000 - offset)


@pytest.mark.parametrize("zone", [2, -5])
def test_a_date_written_in_another_zone_is_read_as_the_instant_it_names(zone: int) -> None:
    """``x-ms-date`` with a numeric zone (RFC 5322 allows one) names the same instant as
    its GMT spelling: it passes at that instant and is stale as many hours off."""
    date = formatdate(1_800_000_000 + zone * 3600)[:-5] + f"{zone:+03d}00"
    given_headers = vipps_headers(BODY, HOST, PATH, secret="a-test-secret", date=date)
    check(given_headers, BODY, now=1_800_000_000)
    with pytest.raises(SignatureError) as err:
        check(given_headers, BODY, now=1_800_000_000 + zone * 3600)
    assert err.value.reason == "stale_date"


def test_an_unparseable_date_is_refused() -> None:
    given_headers = vipps_headers(BODY, HOST, PATH, secret="a-test-secret", date="yesterday")
    with pytest.raises(SignatureError) as err:
        verify(
            SECRET,
            headers(given_headers),
            BODY,
            method="POST",
            host=HOST,
            path_and_query=PATH,
            max_age=300,
            now=1_800_000_000,
        )
    assert err.value.reason == "bad_date"


def test_a_repeated_signature_header_is_refused() -> None:
    """Two x-ms-date fields: which one was signed is ambiguous, so neither counts."""
    given_headers = CIMultiDict(signed())
    given_headers.add("x-ms-date", DATE)
    with pytest.raises(SignatureError) as err:
        verify(
            SECRET,
            CIMultiDictProxy(given_headers),
            BODY,
            method="POST",
            host=HOST,
            path_and_query=PATH,
            max_age=300,
            now=1_800_000_000,
        )
    assert err.value.reason == "missing_signature"


def test_without_public_url_the_request_host_and_target_are_signed() -> None:
    assert signed_target(None, "proxy.local:8080", "/hook?a=1") == ("proxy.local:8080", "/hook?a=1")


def test_public_url_gives_the_signed_host_and_path_keeping_the_query() -> None:
    """Behind a load balancer Vipps signed the public URL's host and path."""
    public = URL("https://shop.example.com/vipps/events")
    assert signed_target(public, "10.0.0.5:8080", "/webhooks/vipps?x=1") == (
        "shop.example.com",
        "/vipps/events?x=1",
    )
    assert signed_target(URL("https://shop.example.com:8443/h"), "x", "/p") == (
        "shop.example.com:8443",
        "/h",
    )


@pytest.mark.parametrize("scheme", ["HMAC-SHA1", "HMAC-SHA512", "hmac-sha256", "XMAC-SHA256"])
def test_a_valid_signature_under_another_scheme_name_is_refused(scheme: str) -> None:
    """The scheme is ``HMAC-SHA256`` exactly: the right signature under any other
    scheme name (another hash, other letter case) is not what Vipps sends."""
    given_headers = signed()
    signature = given_headers["Authorization"].partition(" ")[2]
    given_headers["Authorization"] = f"{scheme} {signature}"
    with pytest.raises(SignatureError) as err:
        check(given_headers, BODY)
    assert err.value.reason == "missing_signature"
