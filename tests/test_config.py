"""Config loading: interpolation, validation naming the key, secrets never shown."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy.config import ConfigError, load_config, parse_config
from tests.conftest import make_config

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
    assert creds.subscription_key is not None
    assert creds.subscription_key.reveal() == "from-a-file-secret"


def test_a_byte_order_mark_in_a_secret_file_is_not_part_of_the_secret(tmp_path: Path) -> None:
    """A file saved by an editor that writes a UTF-8 byte-order mark first: the secret
    is what follows it (with the mark, every token fetch would be refused)."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xef\xbb\xbffrom-a-file-secret\r\n")
    text = GOOD.replace(
        'client_secret = "${VIPPS_CLIENT_SECRET}"', f'client_secret_file = "{secret}"'
    )
    creds = load_config(write(tmp_path, text), ENV).credentials["main"]
    assert creds.client_secret.reveal() == "from-a-file-secret"


def test_a_secret_given_inline_and_as_a_file_exits_2_naming_its_key(tmp_path: Path) -> None:
    """``client_secret`` and ``client_secret_file`` together: neither silently wins;
    one line naming the key, and neither value shown."""
    secret = tmp_path / "secret"
    secret.write_text("file-secret-value\n")
    path = write(tmp_path, GOOD + f'client_secret_file = "{secret}"\n')
    result = run_cli("check", "--config", str(path), env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vipps-proxy: credentials.main.client_secret: is given both inline and as "
        "client_secret_file: keep one"
    ]
    assert "file-secret-value" not in result.stdout + result.stderr
    assert ENV["VIPPS_CLIENT_SECRET"] not in result.stdout + result.stderr


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


MAIN = {
    "token_url": "https://apitest.vipps.no/accesstoken/get",
    "client_id": "a",
    "client_secret": "bbbb",
    "subscription_key": "cccc",
}


def server_doc(**server: object) -> dict[str, object]:
    return {"server": server, "credentials": {"main": MAIN}}


def test_open_listener_without_client_auth_is_refused() -> None:
    """Listening beyond loopback while letting in everyone needs an explicit opt-in."""
    doc = server_doc(host="0.0.0.0", allow_clients=["0.0.0.0/0", "::/0"])
    with pytest.raises(ConfigError, match=r"^server\.allow_clients\[0\]: 0\.0\.0\.0/0 lets in"):
        parse_config(doc, {})


#: Not public, as the refusal reads it: private, loopback, link-local, unique-local.
NOT_PUBLIC = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "::1/128",
        "fe80::/10",
        "fc00::/7",
    )
]
Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def public(address: int, version: int) -> bool:
    ip = ipaddress.ip_address(address) if version == 4 else ipaddress.IPv6Address(address)
    return not any(ip in net for net in NOT_PUBLIC)


def holds_a_public_address(net: Net) -> bool:
    """Independently of the code: ``net`` is an interval of addresses, the non-public
    ranges are intervals; ``net`` holds a public address if its first or last one is
    public, or if an address just outside a non-public range falls inside it."""
    first, last = int(net.network_address), int(net.broadcast_address)
    edges = [first, last]
    for other in NOT_PUBLIC:
        if other.version == net.version:
            edges += [int(other.network_address) - 1, int(other.broadcast_address) + 1]
    return any(first <= a <= last and a >= 0 and public(a, net.version) for a in edges)


@st.composite
def networks(draw: st.DrawFn) -> Net:
    """Any network; half of them near a non-public range, inside it or around it."""
    if draw(st.booleans()):
        near = draw(st.sampled_from(NOT_PUBLIC))
        size = near.max_prefixlen
        offset = draw(st.integers(0, near.num_addresses - 1))
        address = int(near.network_address) + offset
        prefix = draw(st.integers(max(0, near.prefixlen - 4), size))
    else:
        size = draw(st.sampled_from([32, 128]))
        address = draw(st.integers(0, 2**size - 1))
        prefix = draw(st.integers(0, size))
    ip = ipaddress.IPv4Address(address) if size == 32 else ipaddress.IPv6Address(address)
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(networks(), min_size=1, max_size=3))
@example([ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1")])
@example([ipaddress.ip_network("8.8.8.0/24")])
@example([ipaddress.ip_network("172.0.0.0/11")])
@example([ipaddress.ip_network("::ffff:0.0.0.0/96")])
@example([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.0.0/16")])
def test_an_unguarded_listener_is_refused_exactly_when_a_public_address_gets_in(
    nets: list[Net],
) -> None:
    """host 0.0.0.0, no client_keys or client_ca: refused if and only if allow_clients
    lets in any public address, however the networks are cut."""
    allow = ["127.0.0.0/8", "::1/128", *map(str, nets)]
    doc = server_doc(host="0.0.0.0", allow_clients=allow)
    if any(holds_a_public_address(net) for net in nets):
        with pytest.raises(ConfigError, match=r"^server\.allow_clients\[\d\]: .* public"):
            parse_config(doc, {})
    else:
        assert parse_config(doc, {}).server.allow_clients[2:] == tuple(nets)


@pytest.mark.parametrize(
    "server",
    [
        {"host": "127.0.0.1"},
        {"host": "::1"},
        {"host": "localhost"},
        {"host": "0.0.0.0", "allow_open_network": True},
        {"host": "0.0.0.0", "client_keys": ["k" * 16]},
    ],
    ids=["loopback-v4", "loopback-v6", "localhost", "opted-in", "client-keys"],
)
def test_a_public_allow_list_is_allowed_when_loopback_opted_in_or_keyed(
    server: dict[str, object],
) -> None:
    """``0.0.0.0/0`` passes on a loopback listener, with the opt-in, or with client keys."""
    config = parse_config(server_doc(allow_clients=["0.0.0.0/0"], **server), {})
    assert str(config.server.allow_clients[0]) == "0.0.0.0/0"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ([""], "server.client_keys[0]: is empty"),
        (["   "], "server.client_keys[0]: is empty"),
        (["k" * 16, "${UNSET_KEY:-}"], "server.client_keys[1]: is empty"),
        (["short-key-15-ch"], "server.client_keys[0]: must be at least 16 characters"),
    ],
    ids=["empty", "blank", "unset-with-empty-default", "fifteen-characters"],
)
def test_empty_and_short_client_keys_are_config_errors(keys: list[str], message: str) -> None:
    """A client key that is empty (``${KEY:-}`` with KEY unset) or short guards nothing."""
    with pytest.raises(ConfigError) as info:
        parse_config(server_doc(client_keys=keys), {})
    assert str(info.value) == message


def test_an_unset_client_key_behind_an_open_listener_fails_check(tmp_path: Path) -> None:
    """The attack's config: listening on every address, letting in every address, its
    only guard a key from an unset variable. ``check`` exits 2 with one line."""
    text = GOOD.replace(
        "[credentials.main]",
        '[server]\nhost = "0.0.0.0"\nallow_clients = ["0.0.0.0/0"]\n'
        'client_keys = ["${VIPPS_PROXY_KEY:-}"]\n\n[credentials.main]',
    )
    result = run_cli("check", "--config", str(write(tmp_path, text)), env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["vipps-proxy: server.client_keys[0]: is empty"]


def test_check_exits_2_with_one_line_naming_the_key(tmp_path: Path) -> None:
    """`vipps-proxy check` on a bad config: exit 2, one stderr line, no traceback."""
    path = write(tmp_path, GOOD.replace("https://apitest.vipps.no/accesstoken/get", "ftp:/x"))
    result = run_cli("check", "--config", str(path), env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vipps-proxy: credentials.main.token_url: not a URL: 'ftp:/x'"
    ]


@pytest.mark.parametrize("value", ["shop\nX-Evil: 1", "shop\r", "shop\x1b[2J", "shop\x7f"])
def test_a_system_header_value_with_a_control_character_exits_2_naming_the_key(
    tmp_path: Path, value: str
) -> None:
    """``system_name`` from the environment with a newline (or ESC, DEL) cannot be sent
    as a header: bad config naming the key, not a token endpoint "unreachable" on every
    fetch (the accesstoken request carries it)."""
    path = write(tmp_path, GOOD + 'system_name = "${VIPPS_SYSTEM}"\n')
    result = run_cli("check", "--config", str(path), env={**ENV, "VIPPS_SYSTEM": value})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vipps-proxy: credentials.main.system_name: has a control character"
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


@pytest.mark.parametrize(
    ("first", "second"),
    [("/epayment/", "/ePayment/"), ("/epayment", "/epayment/"), ("/recurring/", "/RECURRING")],
)
def test_route_prefixes_the_router_reads_alike_are_duplicates(first: str, second: str) -> None:
    """Prefixes match case-insensitively and with or without the trailing slash, so two
    that differ only so would cover the same calls, one of them silently never (with
    another credential set, its calls would go out with the wrong one's keys)."""
    routes = [
        {"prefix": first, "upstream": "https://apitest.vipps.no", "credentials": "main"},
        {"prefix": second, "upstream": "https://apitest.vipps.no", "credentials": "main"},
    ]
    with pytest.raises(ConfigError) as info:
        parse_config({"credentials": {"main": MAIN}, "routes": routes}, {})
    assert str(info.value).startswith("routes[1].prefix: duplicate prefix")


@pytest.mark.parametrize("prefix", ["/epaymen%74/", "/a;b/", "/a?x/", "/a#b/", "/a\\b/"])
def test_a_route_prefix_written_with_escapes_or_parameters_is_refused(prefix: str) -> None:
    """Routes match the path as the upstream reads it (escapes decoded, no ';'): a prefix
    written with them could never match, so it is a config error naming the key."""
    with pytest.raises(ConfigError, match=r"routes\[0\]\.prefix"):
        make_config(
            "http://127.0.0.1:1/accesstoken/get", "http://127.0.0.1:1", route={"prefix": prefix}
        )
