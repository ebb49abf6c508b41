"""Config loading: interpolation, validation naming the key, secrets never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config, parse_config

GOOD = """
[credentials.main]
token_url = "https://apitest.vipps.no/accesstoken/get"
client_id = "${VIPPS_CLIENT_ID}"
client_secret = "${VIPPS_CLIENT_SECRET}"
subscription_key = "${VIPPS_SUBSCRIPTION_KEY}"
merchant_serial_number = "${VIPPS_MSN:-123456}"
"""
ENV = {
    "VIPPS_CLIENT_ID": "cid-4711",
    "VIPPS_CLIENT_SECRET": "sekret-client-secret-value",
    "VIPPS_SUBSCRIPTION_KEY": "subkey-0123456789abcdef",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_environment_references_are_interpolated(tmp_path: Path) -> None:
    """${NAME} takes the variable, ${NAME:-x} falls back to x."""
    config = load_config(write(tmp_path, GOOD), ENV)
    creds = config.credentials["main"]
    assert creds.client_id.reveal() == "cid-4711"
    assert creds.merchant_serial_number == "123456"


def test_missing_environment_variable_names_the_key_and_variable(tmp_path: Path) -> None:
    """A missing variable is an error naming both the key and the variable."""
    env = {k: v for k, v in ENV.items() if k != "VIPPS_CLIENT_SECRET"}
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD), env)
    assert str(info.value) == (
        "credentials.main.client_secret: environment variable VIPPS_CLIENT_SECRET is not set"
    )


def test_secret_can_come_from_a_file(tmp_path: Path) -> None:
    """${file:/path} and <key>_file read a secret file, trailing newline stripped."""
    secret = tmp_path / "secret"
    secret.write_text("from-a-file-secret\n")
    text = GOOD.replace('"${VIPPS_CLIENT_SECRET}"', f'"${{file:{secret}}}"')
    text = text.replace(
        'subscription_key = "${VIPPS_SUBSCRIPTION_KEY}"', f'subscription_key_file = "{secret}"'
    )
    creds = load_config(write(tmp_path, text), ENV).credentials["main"]
    assert creds.client_secret.reveal() == "from-a-file-secret"
    assert creds.subscription_key.reveal() == "from-a-file-secret"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"credentials": {"main": {"token_url": "nope"}}}, "credentials.main.token_url: not a URL"),
        ({"credentials": {}}, "credentials: at least one"),
        ({"server": {"port": 70000}}, "server.port: must be a whole number"),
        ({"server": {"allow_clients": ["10.0.0.0/33"]}}, "server.allow_clients[0]: not a CIDR"),
        ({"server": {"bogus": 1}}, "server.bogus: unknown key"),
        ({"log": {"level": "loud"}}, "log.level: must be one of"),
        ({"routes": [{"prefix": "x", "upstream": "http://127.0.0.1"}]}, "routes[0].prefix"),
    ],
)
def test_invalid_values_name_their_key(doc: dict[str, object], message: str) -> None:
    """Every validation error starts with the dotted key that is wrong."""
    base: dict[str, object] = {
        "credentials": {
            "main": {
                "token_url": "https://apitest.vipps.no/accesstoken/get",
                "client_id": "a-client",
                "client_secret": "a-secret",
                "subscription_key": "a-key",
            }
        }
    }
    for section, value in doc.items():
        if section == "credentials" and value and isinstance(value, dict):
            merged = dict(base["credentials"]["main"])  # type: ignore[index]
            merged.update(value["main"])
            base["credentials"] = {"main": merged}
        else:
            base[section] = value
    with pytest.raises(ConfigError) as info:
        parse_config(base, {})
    assert str(info.value).startswith(message)


def test_open_listener_without_client_auth_is_refused() -> None:
    """Listening beyond loopback while letting in everyone needs an explicit opt-in."""
    doc = {
        "server": {"host": "0.0.0.0", "allow_clients": ["0.0.0.0/0", "::/0"]},
        "credentials": {
            "main": {
                "token_url": "https://apitest.vipps.no/accesstoken/get",
                "client_id": "a",
                "client_secret": "bbbb",
                "subscription_key": "cccc",
            }
        },
    }
    with pytest.raises(ConfigError, match=r"^server\.allow_clients: listening beyond loopback"):
        parse_config(doc, {})


def test_check_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    """`vipps-proxy check` on a bad config: exit 2, one stderr line, no traceback."""
    path = write(tmp_path, GOOD.replace("https://apitest.vipps.no/accesstoken/get", "ftp:/x"))
    result = run_cli("check", "--config", str(path), env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vipps-proxy: credentials.main.token_url: not a URL: 'ftp:/x'"
    ]


def test_check_prints_the_config_with_secrets_masked(tmp_path: Path) -> None:
    """`check` shows the effective config and no secret value, in any output."""
    result = run_cli("check", "--config", str(write(tmp_path, GOOD)), env=ENV)
    assert result.returncode == 0
    assert '"client_secret": "***"' in result.stdout
    output = result.stdout + result.stderr
    for secret in ENV.values():
        assert secret not in output


def test_secrets_do_not_show_in_repr(tmp_path: Path) -> None:
    """repr() of the whole config shows no secret value."""
    text = repr(load_config(write(tmp_path, GOOD), ENV))
    for secret in ENV.values():
        assert secret not in text


def test_check_names_every_missing_variable_in_one_run(tmp_path: Path) -> None:
    """Four variables missing: `check` names all four, one line each, and exits 2."""
    text = GOOD.replace("${VIPPS_MSN:-123456}", "${VIPPS_MSN}")
    result = run_cli("check", "--config", str(write(tmp_path, text)), env={})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"vipps-proxy: credentials.main.{key}: environment variable {name} is not set"
        for key, name in (
            ("client_id", "VIPPS_CLIENT_ID"),
            ("client_secret", "VIPPS_CLIENT_SECRET"),
            ("subscription_key", "VIPPS_SUBSCRIPTION_KEY"),
            ("merchant_serial_number", "VIPPS_MSN"),
        )
    ]


@pytest.mark.parametrize("msn", ["abc", "12 34", "123456x", "-1", "١٢٣"])
def test_a_merchant_serial_number_that_is_not_digits_is_refused(tmp_path: Path, msn: str) -> None:
    """An MSN is digits; anything else is a config error naming the key."""
    path = write(tmp_path, GOOD.replace("${VIPPS_MSN:-123456}", msn))
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV)
    assert (
        str(info.value) == f"credentials.main.merchant_serial_number: must be digits, not {msn!r}"
    )
