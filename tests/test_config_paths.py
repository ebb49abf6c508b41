"""One rule for relative paths: every path in a config (secret files, certificates, CA
bundles, the store) is taken from the config file's folder, wherever the proxy runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from proxy.config import Config, load_config

from .test_config import run_cli

CREDENTIALS = """
[credentials.main]
token_url = "https://apitest.vipps.no/accesstoken/get"
client_id = "cid-4711"
{secret}
subscription_key = "sub-key-4711"
merchant_serial_number = "123456"
"""
INLINE_SECRET = 'client_secret = "inline-secret-4711"'
HOOK = """
[[webhooks]]
path = "/hooks/vipps"
deliver_to = "http://127.0.0.1:9000/events"
{secret}
"""


def with_credentials(rest: str, secret: str = INLINE_SECRET) -> str:
    return CREDENTIALS.format(secret=secret) + rest


#: Per path kind: the config text naming ``sub/file`` relatively, and how the loaded
#: config shows the path it read (or, for secrets, the value it read there).
KINDS: dict[str, tuple[str, Callable[[Config], str]]] = {
    "secret *_file": (
        with_credentials("", secret='client_secret_file = "sub/file"'),
        lambda c: c.credentials["main"].client_secret.reveal(),
    ),
    "${file:...}": (
        with_credentials("", secret='client_secret = "${file:sub/file}"'),
        lambda c: c.credentials["main"].client_secret.reveal(),
    ),
    "webhook secret_file": (
        with_credentials(HOOK.format(secret='secret_file = "sub/file"')),
        lambda c: c.webhooks[0].secrets[0].reveal(),
    ),
    "server.tls_cert": (
        '[server]\ntls_cert = "sub/file"\ntls_key = "sub/key"\n' + with_credentials(""),
        lambda c: c.server.tls_cert,
    ),
    "server.client_ca": (
        '[server]\ntls_cert = "sub/file"\ntls_key = "sub/key"\nclient_ca = "sub/file"\n'
        + with_credentials(""),
        lambda c: c.server.client_ca,
    ),
    "tls.ca_bundle": (
        '[tls]\nca_bundle = "sub/file"\n' + with_credentials(""),
        lambda c: c.tls.ca_bundle,
    ),
    "tls.client_cert": (
        '[tls]\nclient_cert = "sub/file"\nclient_key = "sub/key"\n' + with_credentials(""),
        lambda c: c.tls.client_cert,
    ),
    "store.path": ('[store]\npath = "sub/file"\n' + with_credentials(""), lambda c: c.store.path),
}
SECRET_VALUE = "secret-from-a-file-4711"


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``conf/`` holds the config and ``conf/sub/``; the process runs in ``elsewhere/``,
    which holds decoys at the same relative paths."""
    for folder in ("conf/sub", "elsewhere/sub"):
        (tmp_path / folder).mkdir(parents=True)
    for name in ("file", "key"):
        (tmp_path / "conf/sub" / name).write_text(SECRET_VALUE + "\n")
        (tmp_path / "elsewhere/sub" / name).write_text("decoy-in-the-working-folder\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path / "conf"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_relative_path_is_taken_from_the_config_files_folder(layout: Path, kind: str) -> None:
    """Loaded from another working folder, the config reads (or names) the file beside
    it, never the one at the same relative path in the working folder."""
    text, shown = KINDS[kind]
    config_file = layout / "proxy.toml"
    config_file.write_text(text)
    config = load_config(config_file, {})
    value = shown(config)
    assert value in (SECRET_VALUE, str(layout / "sub/file"))


def test_the_files_a_reload_watches_are_those_the_config_read(layout: Path) -> None:
    """``Config.files`` names the secret file the config read (by its absolute path),
    so a change there is seen whatever the working folder."""
    config_file = layout / "proxy.toml"
    config_file.write_text(with_credentials("", secret='client_secret = "${file:sub/file}"'))
    config = load_config(config_file, {})
    assert str(layout / "sub/file") in config.files
    assert config.digests[str(layout / "sub/file")] != "-"


def test_an_absolute_path_is_kept(layout: Path) -> None:
    """An absolute path is read where it says."""
    config_file = layout / "proxy.toml"
    config_file.write_text(
        with_credentials("", secret=f'client_secret_file = "{layout / "sub/file"}"')
    )
    assert load_config(config_file, {}).credentials["main"].client_secret.reveal() == SECRET_VALUE


def test_check_run_from_another_folder_reads_the_secret_files_beside_the_config(
    layout: Path,
) -> None:
    """`vipps-proxy check --config conf/proxy.toml` from the config's parent folder works
    with secret files named relative to the config."""
    (layout.parent / "elsewhere/sub/file").unlink()  # no decoy: a miss would fail
    config_file = layout / "proxy.toml"
    config_file.write_text(with_credentials("", secret='client_secret_file = "sub/file"'))
    result = run_cli("check", "--config", str(config_file))
    assert result.returncode == 0, result.stderr
    assert SECRET_VALUE not in result.stdout + result.stderr
