"""Start-up failures of `run`, `demo` and `emulator`: one line naming the key, exit 1.

Each command runs as a real process; the busy port is a real listening socket.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.startup import EXIT_STARTUP

from .processes import write_config
from .test_config import run_cli

PR_CAPBSET_DROP = 24
CAP_NET_BIND_SERVICE = 10


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another process already listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def assert_one_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    """Exit 1, that line alone on stderr, nothing on stdout."""
    assert result.returncode == EXIT_STARTUP, result.stderr
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""


def proxy_config(tmp_path: Path, port: int, **server: object) -> str:
    token_url, upstream = "http://127.0.0.1:9/accesstoken/get", "http://127.0.0.1:9"
    return str(write_config(tmp_path / "proxy.toml", token_url, upstream, port, **server))


def test_run_on_a_busy_port_names_server_port(tmp_path: Path, busy_port: int) -> None:
    """`run` on a taken port: one line naming server.port and the address."""
    result = run_cli("--config", proxy_config(tmp_path, busy_port))
    assert_one_line(result, f"vipps-proxy: server.port: 127.0.0.1:{busy_port} is already in use")


def test_workers_on_a_busy_port_say_it_once(tmp_path: Path, busy_port: int) -> None:
    """With workers = 2 the parent finds the taken port before starting any worker."""
    result = run_cli("--config", proxy_config(tmp_path, busy_port, workers=2))
    assert_one_line(result, f"vipps-proxy: server.port: 127.0.0.1:{busy_port} is already in use")


def test_demo_on_a_busy_proxy_port_names_the_port_flag(busy_port: int) -> None:
    """`demo --port` taken: the line names --port."""
    result = run_cli("demo", "--port", str(busy_port), "--emulator-port", "0")
    assert result.returncode == EXIT_STARTUP
    assert result.stderr.splitlines() == [
        f"vipps-proxy: --port: 127.0.0.1:{busy_port} is already in use"
    ]


def test_demo_on_a_busy_emulator_port_names_the_emulator_port_flag(busy_port: int) -> None:
    """`demo --emulator-port` taken: the line names --emulator-port."""
    result = run_cli("demo", "--port", "0", "--emulator-port", str(busy_port))
    assert result.returncode == EXIT_STARTUP
    assert result.stderr.splitlines() == [
        f"vipps-proxy: --emulator-port: 127.0.0.1:{busy_port} is already in use"
    ]


def test_emulator_on_a_busy_port_names_the_port_flag(busy_port: int) -> None:
    """`emulator --port` taken: one line, exit 1."""
    result = run_cli("emulator", "--port", str(busy_port))
    assert_one_line(result, f"vipps-proxy: --port: 127.0.0.1:{busy_port} is already in use")


def test_emulator_on_a_busy_admin_port_names_the_admin_port_flag(busy_port: int) -> None:
    """`emulator --admin-port` taken: one line, exit 1."""
    result = run_cli("emulator", "--port", "0", "--admin-port", str(busy_port))
    assert result.returncode == EXIT_STARTUP
    assert result.stderr.splitlines() == [
        f"vipps-proxy: --admin-port: 127.0.0.1:{busy_port} is already in use"
    ]


def test_a_certificate_that_is_not_pem_names_server_tls_cert(tmp_path: Path) -> None:
    """A tls_cert/tls_key that cannot be loaded: one line naming server.tls_cert."""
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    config = proxy_config(tmp_path, 0, tls_cert=str(bad), tls_key=str(bad))
    result = run_cli("--config", config)
    assert_one_line(result, f"vipps-proxy: server.tls_cert: cannot load {bad}: not valid PEM")


def test_a_ca_bundle_without_certificates_names_tls_ca_bundle(tmp_path: Path) -> None:
    """An outbound ca_bundle that holds no certificate: one line naming tls.ca_bundle."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    config = Path(proxy_config(tmp_path, 0))
    config.write_text(config.read_text() + f'\n[tls]\nca_bundle = "{bad}"\n')
    result = run_cli("--config", str(config))
    assert result.returncode == EXIT_STARTUP
    assert result.stderr.splitlines() == [
        f"vipps-proxy: tls.ca_bundle: cannot load {bad}: NO_CERTIFICATE_OR_CRL_FOUND"
    ]


def drop_low_port_privilege() -> None:
    """In the child before exec: give up CAP_NET_BIND_SERVICE, even as root."""
    if os.geteuid() == 0:  # PR_CAPBSET_DROP: root's capabilities after exec lose it
        ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_NET_BIND_SERVICE, 0, 0, 0)


def test_a_low_port_without_privileges_says_permission_denied() -> None:
    """Port 80 for a user that may not have it: one line saying why, exit 1."""
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if not start.is_file() or int(start.read_text()) <= 80:
        pytest.skip("this machine lets any user listen on port 80")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "emulator", "--port", "80"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        preexec_fn=drop_low_port_privilege,
    )
    assert result.returncode == EXIT_STARTUP, result.stderr
    assert result.stderr.splitlines() == [
        "vipps-proxy: --port: 127.0.0.1:80: permission denied (ports below 1024 need privileges)"
    ]


def test_an_address_not_of_this_machine_names_the_host_flag() -> None:
    """`emulator --host` with an address no interface has (TEST-NET-1): one line, exit 1.

    Binding fails on this machine; nothing is sent anywhere."""
    result = run_cli("emulator", "--host", "192.0.2.1", "--port", "0")
    assert_one_line(result, "vipps-proxy: --host: 192.0.2.1:0: not an address of this machine")


def test_run_with_a_store_that_cannot_be_opened_names_store_path(tmp_path: Path) -> None:
    """A webhook store under a path that is a file: one line naming store.path, not a
    traceback, logging errors and an unclosed session."""
    config = Path(proxy_config(tmp_path, 0))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    store = blocker / "events.sqlite3"
    with config.open("a") as out:
        out.write(
            '\n[[webhooks]]\npath = "/webhooks/vipps"\nsecret = "a-webhook-secret"\n'
            'deliver_to = "http://127.0.0.1:9/events"\n'
            f'\n[store]\npath = "{store}"\n'
        )
    result = run_cli("--config", str(config))
    assert result.returncode == EXIT_STARTUP, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"vipps-proxy: store.path: cannot open {store}: ")
