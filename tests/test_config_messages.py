"""Config errors a person can act on: the wrong value shown (never a secret's), and a
"did you mean" for a misspelt key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proxy.config import ConfigError, parse_config
from tests.test_config import run_cli

MAIN = {
    "token_url": "https://apitest.vipps.no/accesstoken/get",
    "client_id": "a-client",
    "client_secret": "a-secret",
    "subscription_key": "a-key",
}


def error_of(doc: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"credentials": {"main": MAIN}, **doc}, {})
    return str(info.value)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"port": "abc"}, "server.port: must be a number, got 'abc'"),
        ({"port": 70000}, "server.port: must be a whole number from 0 to 65535, got 70000"),
        ({"port": "inf"}, "server.port: must be a whole number from 0 to 65535, got 'inf'"),
        ({"shutdown_timeout": -1}, "server.shutdown_timeout: must be at least 0, got -1"),
        ({"host": 8080}, "server.host: must be a string, got 8080"),
        (
            {"allow_open_network": "yes"},
            "server.allow_open_network: must be true or false, got 'yes'",
        ),
    ],
)
def test_a_bad_value_is_shown_in_its_error(server: dict[str, Any], message: str) -> None:
    """The error names the key, says what it must be, and shows what it got."""
    assert error_of({"server": server}) == message


def test_a_long_bad_value_is_shown_cut() -> None:
    """A value of any length shows at most 60 characters of itself."""
    message = error_of({"server": {"port": "x" * 500}})
    assert message.startswith("server.port: must be a number, got 'xxx")
    assert message.endswith("...")
    assert len(message) < 120


SECRETS = ["client_id", "client_secret", "subscription_key", "token_subscription_key"]


@pytest.mark.parametrize("key", SECRETS)
def test_a_secret_keys_bad_value_is_never_shown(key: str) -> None:
    """A credential secret of the wrong type: the error names the key, not the value."""
    value = ["s3cret-value-that-must-not-show"]
    message = error_of({"credentials": {"main": {**MAIN, key: value}}})
    assert message == f"credentials.main.{key}: must be a string"


def test_a_client_keys_bad_value_is_never_shown() -> None:
    """``client_keys`` given as one string (not a list): the key is named, not shown."""
    message = error_of({"server": {"client_keys": "a-client-key-of-32-characters-00"}})
    assert message == "server.client_keys: must be a list"


@given(st.text(min_size=6).filter(lambda s: s.strip() == s))
def test_no_secret_value_of_any_shape_shows_in_an_error(value: str) -> None:
    """Whatever the wrong value, a secret key's error never holds it: as a number where
    a string is due (a list holding it), or as a webhook secret in a list of lists.
    (A value that is part of the message's own words, such as "string", proves nothing.)"""
    docs: list[Callable[[str], dict[str, Any]]] = [
        lambda v: {"credentials": {"main": {**MAIN, "client_secret": [v]}}},
        lambda v: {"server": {"client_keys": [[v]]}},
        lambda v: {
            "webhooks": [{"path": "/w", "secret": {"v": v}, "deliver_to": "http://127.0.0.1:9/"}]
        },
    ]
    for doc in docs:
        assume(value not in error_of(doc("\u2603" * 6)))
        assert value not in error_of(doc(value))


@given(st.text(min_size=1, max_size=40))
def test_a_non_number_is_shown_as_given(value: str) -> None:
    """Any string that is not a number shows, quoted, after 'got' (cut past 60)."""
    try:
        float(value)
    except ValueError:
        message = error_of({"server": {"body_timeout": value}})
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        assert message == f"server.body_timeout: must be a number, got {shown}"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"server": {"prot": 1}}, "server.prot: unknown key (did you mean port?)"),
        ({"sever": {}}, "sever: unknown key (did you mean server?)"),
        (
            {"credentials": {"main": {**MAIN, "client_scret": "x"}}},
            "credentials.main.client_scret: unknown key (did you mean client_secret?)",
        ),
        (
            {"routes": [{"prefix": "/", "upstram": "https://apitest.vipps.no"}]},
            "routes[0].upstram: unknown key (did you mean upstream?)",
        ),
        ({"server": {"zzz": 1}}, "server.zzz: unknown key"),
    ],
)
def test_an_unknown_key_gets_the_closest_known_one(doc: dict[str, Any], message: str) -> None:
    """A misspelt key is named with the known key it is closest to; one close to none
    gets no guess."""
    assert error_of(doc) == message


def test_check_shows_the_bad_value_in_one_line(tmp_path: Path) -> None:
    """`vipps-proxy check` on a config with port = "80a": exit 2, one line with it."""
    config = tmp_path / "proxy.toml"
    config.write_text(
        '[server]\nport = "80a"\n\n[credentials.main]\n'
        'token_url = "https://apitest.vipps.no/accesstoken/get"\n'
        'client_id = "a"\nclient_secret = "b"\nsubscription_key = "c"\n'
    )
    done = run_cli("check", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["vipps-proxy: server.port: must be a number, got '80a'"]
