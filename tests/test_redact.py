"""The redactor's rules, one at a time: which keys are always masked, which secrets are
known, how overlapping secrets are masked, and what happens to values that are not
strings. (The escaped and base64 forms are in test_logging.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from proxy.redact import (
    MAX_KEYS_KNOWN,
    MAX_TOKENS_KEPT,
    MIN_SECRET_LENGTH,
    SENSITIVE_KEYS,
    Redactor,
    query_values,
)
from proxy.secret import Secret


@pytest.mark.parametrize(
    "key",
    [
        "authorization",
        "proxy-authorization",
        "ocp-apim-subscription-key",
        "client_secret",
        "client-secret",
        "access_token",
        "token_value",
        "password",
        "subscription_key",
    ],
)
def test_each_sensitive_key_is_masked_whatever_its_value_or_case(key: str) -> None:
    """A value logged under a credential's name is masked even when it is no known
    secret, at the top of the line, in any case, and inside a nested mapping."""
    assert key in SENSITIVE_KEYS
    redactor = Redactor()
    line = redactor(None, "info", {"event": "x", key.upper(): "not-a-known-secret"})
    assert line[key.upper()] == "***"
    nested = redactor(None, "info", {"event": "x", "headers": {key: "not-a-known-secret"}})
    assert nested["headers"] == {key: "***"}


def test_a_secret_that_contains_another_is_masked_whole() -> None:
    """Longest first: when one secret holds another, the longer is masked as one, so no
    piece of it is left beside the mask, in whatever order the secrets were given."""
    short, long = "abcd-1234", "abcd-1234-tail-of-the-longer"
    for secrets in ([short, long], [long, short]):
        redactor = Redactor([Secret(s) for s in secrets])
        assert redactor.redact_text(f"<{long}>") == "<***>"
        assert redactor.redact_text(f"<{short}>") == "<***>"


def test_a_fetched_token_that_contains_a_configured_secret_is_masked_whole() -> None:
    """Tokens join the same longest-first order as the config's secrets."""
    redactor = Redactor([Secret("abcd-1234")])
    redactor.add("xyz-abcd-1234-xyz")
    assert redactor.redact_text("t=xyz-abcd-1234-xyz;") == "t=***;"


def test_a_secret_in_a_short_text_is_masked_when_longer_secrets_are_known() -> None:
    """A text shorter than some secrets is still searched for every shorter one."""
    redactor = Redactor([Secret("s" * 40), Secret("k" * 20), Secret("abcdef")])
    assert redactor.redact_text("=abcdef") == "=***"
    assert redactor.redact_text("k" * 20) == "***"
    assert redactor.redact_text("s" * 40) == "***"


def test_secrets_shorter_than_the_minimum_are_not_masked() -> None:
    """A one- to three-letter "secret" would mangle every line, so it is not searched;
    one of exactly the minimum length is."""
    tiny = "x" * (MIN_SECRET_LENGTH - 1)
    exact = "y" * MIN_SECRET_LENGTH
    redactor = Redactor([Secret(tiny), Secret(exact)])
    assert redactor.redact_text(f"{tiny} {exact}") == f"{tiny} ***"
    redactor.add("z" * (MIN_SECRET_LENGTH - 1))
    redactor.add("w" * MIN_SECRET_LENGTH)
    assert redactor.redact_text("zzz wwww") == "zzz ***"


def test_the_last_tokens_fetched_stay_masked() -> None:
    """Old tokens stay secret: each of the last ``MAX_TOKENS_KEPT`` tokens is masked,
    and adding one already known forgets none."""
    redactor = Redactor()
    tokens = [f"token-{n:04d}" for n in range(MAX_TOKENS_KEPT)]
    for token in tokens:
        redactor.add(token)
    redactor.add(tokens[-1])
    for token in tokens:
        assert redactor.redact_text(token) == "***"


def test_the_tokens_remembered_are_bounded() -> None:
    """A proxy running for months fetches many tokens: at most ``MAX_TOKENS_KEPT`` are
    kept (the oldest go first), so memory and the cost of a search stay bounded."""
    redactor = Redactor()
    for n in range(3 * MAX_TOKENS_KEPT):
        redactor.add(f"token-{n:04d}")
    assert len(redactor._tokens) == MAX_TOKENS_KEPT
    assert redactor.redact_text(f"token-{3 * MAX_TOKENS_KEPT - 1:04d}") == "***"


def test_the_log_keys_remembered_as_plain_are_bounded() -> None:
    """Lines that bring ever new keys (three at a time here, so the count steps past
    ``MAX_KEYS_KNOWN`` rather than onto it) stop being remembered at the bound, and a
    secret under a key never seen is still masked."""
    redactor = Redactor([Secret("a-secret-value")])
    for n in range(MAX_KEYS_KNOWN):
        redactor(None, "info", {f"a{n}": 1, f"b{n}": 2, f"c{n}": 3})
    assert len(redactor._plain_keys) < MAX_KEYS_KNOWN + 3
    assert redactor(None, "info", {"late": "<a-secret-value>"})["late"] == "<***>"


@pytest.mark.parametrize("value", [0, 7, 2.5, True, False, None])
def test_numbers_booleans_and_none_keep_their_type(value: Any) -> None:
    """Non-string scalars pass as they are (a status stays an int in the JSON line),
    also on a line that has something to mask."""
    redactor = Redactor([Secret("s3cret-value")])
    line = redactor(None, "info", {"event": "x", "detail": "s3cret-value", "n": value})
    assert line["n"] is value or (line["n"] == value and type(line["n"]) is type(value))
    nested = redactor(None, "info", {"event": "x", "items": [value, "s3cret-value"]})
    assert nested["items"] == [value, "***"]
    assert type(nested["items"][0]) is type(value)


def test_any_other_value_is_logged_as_its_masked_text() -> None:
    """An object that is no string, number or container is logged as its ``str``,
    masked: an exception quoting a secret cannot leak it."""
    redactor = Redactor([Secret("s3cret-value")])
    line = redactor(None, "info", {"event": "x", "error": ValueError("bad s3cret-value")})
    assert line["error"] == "bad ***"


def test_tuples_and_lists_are_masked_item_by_item() -> None:
    redactor = Redactor([Secret("s3cret-value")])
    line = redactor(None, "info", {"event": "x", "pair": ("a", "s3cret-value")})
    assert line["pair"] == ["a", "***"]


def test_a_clean_line_with_a_non_string_value_still_masks_secrets_in_it() -> None:
    """A mapping, a list or an object in a line makes the redactor look inside it."""
    redactor = Redactor([Secret("s3cret-value")])
    line = redactor(None, "info", {"event": "x", "detail": {"inner": "s3cret-value"}})
    assert line["detail"] == {"inner": "***"}


def test_a_key_seen_as_plain_does_not_hide_a_secret_in_its_value() -> None:
    """Keys remembered as not sensitive still have their values searched."""
    redactor = Redactor([Secret("s3cret-value")])
    assert redactor(None, "info", {"event": "x", "detail": "ok"}) == {"event": "x", "detail": "ok"}
    line = redactor(None, "info", {"event": "x", "detail": "s3cret-value"})
    assert line["detail"] == "***"


def test_secrets_learned_from_a_reloaded_config_are_masked_by_the_same_minimum() -> None:
    """A reload hands the redactor the new config's secrets: each is masked from then on
    (the old ones too), with the same minimum length as at start."""
    redactor = Redactor([Secret("old-client-secret")])
    tiny = "t" * (MIN_SECRET_LENGTH - 1)
    exact = "e" * MIN_SECRET_LENGTH
    redactor.learn([Secret("rotated-client-secret-value"), Secret(exact), Secret(tiny)])
    text = f"old-client-secret rotated-client-secret-value {exact} {tiny}"
    assert redactor.redact_text(text) == f"*** *** *** {tiny}"


def test_a_query_part_without_a_value_is_taken_for_a_secret() -> None:
    """``deliver_to``'s ``?k3y`` (an app key written alone) is a secret as much as
    ``?app_key=v4lue``: both are given to the config's secrets, in order."""
    url = URL("https://app.example/callbacks?k3y-alone&app_key=v4lue")
    assert query_values(url) == ("k3y-alone", "v4lue")


def test_a_redactor_that_knows_a_single_token_masks_it() -> None:
    """One known value only (a token, before any config secret): texts shorter and
    longer than it are searched, and it is masked."""
    redactor = Redactor()
    redactor.add("tok-abcdef")
    assert redactor.redact_text("x") == "x"
    assert redactor.redact_text("a tok-abcdef b") == "a *** b"
