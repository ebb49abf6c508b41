"""``[[webhooks]]`` and ``[store]``: parsed, validated naming the key, secrets kept secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, load_config, parse_config
from proxy.redact import Redactor
from proxy.webhooks.commands import write_secret

CREDENTIALS = """
[credentials.main]
token_url = "https://apitest.vipps.no/accesstoken/get"
client_id = "cid"
client_secret = "client-secret-value"
subscription_key = "subkey-value"
"""
HOOK = {
    "path": "/webhooks/vipps",
    "kind": "vipps-webhook",
    "secret": "hook-secret-value",
    "deliver_to": "http://127.0.0.1:9000/vipps/events",
}


def parse(
    *hooks: dict[str, Any],
    store: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
) -> Any:
    doc: dict[str, Any] = {
        "credentials": {
            "main": {
                "token_url": "https://apitest.vipps.no/accesstoken/get",
                "client_id": "cid",
                "client_secret": "client-secret-value",
                "subscription_key": "subkey-value",
            }
        },
        "webhooks": list(hooks),
    }
    if store is not None:
        doc["store"] = store
    if server is not None:
        doc["server"] = server
    return parse_config(doc, {}, source="/etc/vipps-proxy/proxy.toml")


def test_a_webhook_entry_is_parsed_with_its_defaults() -> None:
    config = parse(HOOK)
    (hook,) = config.webhooks
    assert (hook.path, hook.kind, str(hook.deliver_to)) == (
        HOOK["path"],
        "vipps-webhook",
        HOOK["deliver_to"],
    )
    assert (hook.max_age, hook.retry_for, hook.allow_from, hook.public_url) == (
        8 * 86400,  # Vipps' 7 days of retries and a day: a retry may keep its x-ms-date
        604800,
        (),
        None,
    )
    assert [s.reveal() for s in hook.secrets] == ["hook-secret-value"]
    assert "hook-secret-value" not in repr(config)


def test_the_store_path_is_relative_to_the_config_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "proxy.toml"
    path.write_text(CREDENTIALS + '\n[store]\npath = "var/events.sqlite3"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = Path.cwd()
    os.chdir(elsewhere)
    try:
        config = load_config(Path("..") / "conf" / "proxy.toml")
    finally:
        os.chdir(cwd)
    assert config.store.path == str(folder.resolve() / "var" / "events.sqlite3")


def test_the_store_path_defaults_beside_the_config() -> None:
    assert parse(HOOK).store.path == "/etc/vipps-proxy/var/vipps-proxy.sqlite3"
    assert parse(HOOK, store={"path": "/data/x.db"}).store.path == "/data/x.db"


def test_the_webhook_secret_is_redacted_from_logs() -> None:
    config = parse(HOOK)
    assert Redactor(config.secrets).redact_text("x hook-secret-value y") == "x *** y"


def test_secret_file_is_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file-secret\n")
    hook = {k: v for k, v in HOOK.items() if k != "secret"}
    (parsed,) = parse({**hook, "secret_file": str(secret)}).webhooks
    assert [s.reveal() for s in parsed.secrets] == ["from-a-file-secret"]


def test_a_rotation_into_a_secret_file_that_starts_with_a_bom_keeps_the_old_secret(
    tmp_path: Path,
) -> None:
    """An editor saved the file with a byte-order mark; ``webhooks register`` puts the
    new secret first. Both verify: the mark neither moves mid-file nor joins a secret."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xef\xbb\xbfold-hook-secret\r\n")
    fd = os.open(secret, os.O_RDWR)
    try:
        write_secret(fd, "new-hook-secret")
    finally:
        os.close(fd)
    hook = {k: v for k, v in HOOK.items() if k != "secret"}
    (parsed,) = parse({**hook, "secret_file": str(secret)}).webhooks
    assert [s.reveal() for s in parsed.secrets] == ["new-hook-secret", "old-hook-secret"]


def test_a_config_file_saved_with_a_bom_loads(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    config.write_bytes(b"\xef\xbb\xbf" + f"{CREDENTIALS}\n".encode())
    assert "main" in load_config(config).credentials


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"secret": None}, "webhooks[0].secret"),
        ({"kind": "stripe"}, "webhooks[0].kind"),
        ({"deliver_to": "not a url"}, "webhooks[0].deliver_to"),
        ({"path": "webhooks"}, "webhooks[0].path"),
        ({"path": "/-/metrics"}, "webhooks[0].path"),
        ({"public_url": "shop.example.com"}, "webhooks[0].public_url"),
        ({"max_age": "soon"}, "webhooks[0].max_age"),
        ({"max_age": "nan"}, "webhooks[0].max_age"),  # from ${ENV}: never stale, else
        ({"max_age": float("nan")}, "webhooks[0].max_age"),
        ({"allow_from": ["10.0.0.300/8"]}, "webhooks[0].allow_from[0]"),
        ({"colour": "blue"}, "webhooks[0].colour"),
        ({"kind": "ecom-callback"}, "webhooks[0].secret"),  # eCom callbacks are unsigned
    ],
)
def test_a_bad_webhook_entry_names_its_key(change: dict[str, Any], key: str) -> None:
    hook = {k: v for k, v in {**HOOK, **change}.items() if v is not None}
    with pytest.raises(ConfigError) as err:
        parse(hook)
    assert err.value.key == key
    assert "hook-secret-value" not in str(err.value)


@pytest.mark.parametrize("path", ["/", "/callbacks/", "/vipps/callbacks//"])
def test_an_ecom_callback_path_that_is_or_ends_in_a_slash_is_refused(path: str) -> None:
    """``/`` would make every call a callback; after ``/callbacks/`` the rest of a
    callback's path does not start with ``/``, so every callback would be refused."""
    hook = {"path": path, "kind": "ecom-callback", "deliver_to": HOOK["deliver_to"]}
    with pytest.raises(ConfigError) as err:
        parse(hook)
    assert err.value.key == "webhooks[0].path"
    (accepted,) = parse({**hook, "path": path.rstrip("/") or "/callbacks"}).webhooks
    assert accepted.kind == "ecom-callback"


def test_two_entries_on_one_path_are_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse(HOOK, HOOK)
    assert err.value.key == "webhooks[1].path"


def test_an_unknown_store_key_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        parse(HOOK, store={"file": "x"})
    assert err.value.key == "store.file"


def test_check_exits_2_naming_the_webhook_key(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(
        CREDENTIALS + '\n[[webhooks]]\npath = "/hook"\ndeliver_to = "http://127.0.0.1:9/"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "vipps-proxy: webhooks[0].secret: is required"
    assert "Traceback" not in result.stderr


def check(config: Path, hook: str) -> subprocess.CompletedProcess[str]:
    """``vipps-proxy check`` on CREDENTIALS and one ``[[webhooks]]`` entry of ``hook``."""
    config.write_text(f'{CREDENTIALS}\n[[webhooks]]\npath = "/hook"\n{hook}')
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_secret_file_that_is_not_utf8_exits_2_naming_its_key(tmp_path: Path) -> None:
    """A binary or Latin-1 secret file is bad config: one line naming the key, exit 2."""
    (tmp_path / "hook.secret").write_bytes(b"\xff\xfesecret\r\n")
    hook = f'secret_file = "{tmp_path / "hook.secret"}"\ndeliver_to = "http://127.0.0.1:9/"\n'
    result = check(tmp_path / "proxy.toml", hook)
    assert result.returncode == 2
    assert result.stderr.startswith("vipps-proxy: webhooks[0].secret_file: ")
    assert result.stderr.count("\n") == 1


def test_a_webhook_secret_given_inline_and_as_a_file_exits_2_naming_its_key(
    tmp_path: Path,
) -> None:
    """``secret`` and ``secret_file`` together: neither silently wins, even while the
    file does not exist yet; neither value is shown."""
    hook = (
        'secret = "inline-hook-secret"\n'
        f'secret_file = "{tmp_path / "not-yet.secret"}"\n'
        'deliver_to = "http://127.0.0.1:9/"\n'
    )
    result = check(tmp_path / "proxy.toml", hook)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vipps-proxy: webhooks[0].secret: is given both inline and as secret_file: keep one"
    ]
    assert "inline-hook-secret" not in result.stdout + result.stderr


def test_a_deliver_to_with_a_fragment_exits_2_naming_its_key(tmp_path: Path) -> None:
    """``/cb?app_key=k#x``: a callback's path would be appended inside the fragment,
    which is never sent (the app key would not reach the app either)."""
    hook = 'kind = "ecom-callback"\ndeliver_to = "http://127.0.0.1:9/cb?app_key=k#x"\n'
    result = check(tmp_path / "proxy.toml", hook)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vipps-proxy: webhooks[0].deliver_to: must not have a fragment (#...)"
    ]


def test_check_shows_webhooks_with_the_secret_masked(tmp_path: Path) -> None:
    hook = 'secret = "hook-secret-value"\ndeliver_to = "http://127.0.0.1:9/"\n'
    result = check(tmp_path / "proxy.toml", hook)
    assert result.returncode == 0, result.stderr
    assert '"path": "/hook"' in result.stdout
    assert "hook-secret-value" not in result.stdout


ECOM_HOOK = {"path": "/ecom", "kind": "ecom-callback", "deliver_to": "http://127.0.0.1:9000/cb"}


def parse_listening(server: dict[str, Any], *hooks: dict[str, Any]) -> Any:
    """A config whose server listens beyond loopback, with ``hooks``."""
    return parse(*hooks, server={"host": "0.0.0.0", **server})


@pytest.mark.parametrize(
    ("server", "hook", "key"),
    [
        (
            {"allow_clients": ["10.0.0.0/8"]},
            {"allow_from": ["0.0.0.0/0"]},
            "webhooks[0].allow_from[0]",
        ),
        (
            {"allow_clients": ["10.0.0.0/8", "203.0.113.0/24"], "client_keys": ["k" * 32]},
            {},
            "server.allow_clients[1]",
        ),
    ],
)
def test_an_ecom_callback_open_to_public_addresses_is_refused(
    server: dict[str, Any], hook: dict[str, Any], key: str
) -> None:
    """eCom callbacks are unsigned and skip client keys: public addresses let in by
    allow_from, or by allow_clients even with client keys, need allow_open_network."""
    with pytest.raises(ConfigError) as err:
        parse_listening(server, {**ECOM_HOOK, **hook})
    assert err.value.key == key
    parse_listening({**server, "allow_open_network": True}, {**ECOM_HOOK, **hook})


def test_an_ecom_callback_open_to_private_addresses_only_is_accepted() -> None:
    config = parse_listening(
        {"allow_clients": ["10.0.0.0/8"]}, {**ECOM_HOOK, "allow_from": ["192.168.0.0/16"]}
    )
    assert len(config.webhooks) == 1


def test_the_bounds_default_and_are_checked() -> None:
    """max_pending 100000 per hook, max_per_minute 600 (eCom only), whole numbers."""
    (hook,) = parse(HOOK).webhooks
    assert (hook.max_pending, hook.max_per_minute) == (100000, 600)
    changes: list[tuple[dict[str, Any], str]] = [
        ({"max_pending": 0}, "webhooks[0].max_pending"),
        ({"max_pending": 1.5}, "webhooks[0].max_pending"),
        ({"max_per_minute": 10}, "webhooks[0].max_per_minute"),  # a signed webhook: no rate
    ]
    for change, key in changes:
        with pytest.raises(ConfigError) as err:
            parse({**HOOK, **change})
        assert err.value.key == key
    (ecom,) = parse({**ECOM_HOOK, "max_per_minute": 10}).webhooks
    assert ecom.max_per_minute == 10
