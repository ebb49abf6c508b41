"""The demo is clean: it reloads what it really runs, leaves no temporary folder however
it ends, and the README's ePayment flow works against it line by line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from proxy.config import file_digests
from proxy.demo import DemoPorts, demo_config
from tests.conftest import free_port

from .processes import read_until, running_demo
from .test_startup import busy_port

ROOT = Path(__file__).parents[1]
READY = b"Ctrl-C stops the demo"
__all__ = ["busy_port"]  # a fixture, used by name


@pytest.fixture
def demo_tmp(tmp_path: Path) -> Path:
    """Where the demo makes its temporary folder (its TMPDIR): empty at the start."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def test_every_file_the_demo_config_watches_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's config names only files that exist (its own copy included), so the
    file watch never reports `config: file not found: demo.toml`."""
    for name in ("PORT", "LOG_FORMAT", "EMULATOR_URL", "APP_URL", "WEBHOOK_SECRET", "STORE"):
        monkeypatch.setenv(f"DEMO_{name}", "")  # restored after: demo_config sets them
    config, _ = demo_config(tmp_path, DemoPorts(free_port(), free_port()), "json")
    assert config.files
    assert "-" not in file_digests(config.files).values(), config.files


async def test_the_demo_reloads_its_own_config_on_sighup(demo_tmp: Path) -> None:
    """SIGHUP (as the file watch would) reloads the very config the demo runs: no
    `config_reload_failed`."""
    async with running_demo("--log-format", "json", env={"TMPDIR": str(demo_tmp)}) as (demo, _):
        await read_until(demo, READY)
        demo.send_signal(signal.SIGHUP)
        line = await read_until(demo, b'"config_reload')
        assert orjson.loads(line)["event"] == "config_reloaded", line


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_the_demo_removes_its_temporary_folder_when_stopped(
    demo_tmp: Path, sig: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM: the demo's folder (config, store) is gone after it exits."""
    async with running_demo(env={"TMPDIR": str(demo_tmp)}) as (demo, _):
        await read_until(demo, READY)
        (folder,) = os.listdir(demo_tmp)
        assert folder.startswith("vipps-proxy-demo-")
        demo.send_signal(sig)
        assert await asyncio.wait_for(demo.wait(), 30) == 0
    assert not os.listdir(demo_tmp)


@pytest.mark.parametrize("flag", ["--port", "--emulator-port"])
def test_the_demo_removes_its_temporary_folder_when_it_cannot_start(
    demo_tmp: Path, busy_port: int, flag: str
) -> None:
    """A port in use: exit 1 with the one line naming the flag, and no folder left."""
    ports = {"--port": str(free_port()), "--emulator-port": str(free_port())}
    ports[flag] = str(busy_port)
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", *(x for kv in ports.items() for x in kv)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(demo_tmp)},
        check=False,
    )
    assert result.returncode == 1
    assert f"vipps-proxy: {flag}: 127.0.0.1:{busy_port} is already in use" in result.stderr
    assert not list(demo_tmp.iterdir())


def readme_flow(api: str = "/epayment/v1/") -> str:
    """The README's create -> approve -> capture -> refund block for ``api``."""
    text = (ROOT / "README.md").read_text("utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    (block,) = [b for b in blocks if "/refund" in b and api in b]
    return str(block)


async def run_readme_flow(demo_tmp: Path, api: str) -> subprocess.CompletedProcess[str]:
    """Every curl line of the README's flow for ``api``, run as written on a demo."""
    async with running_demo("--auto-approve", "3600", env={"TMPDIR": str(demo_tmp)}) as (
        demo,
        port,
    ):
        await read_until(demo, READY)
        script = readme_flow(api).replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        return await asyncio.to_thread(
            subprocess.run,
            ["bash", "-e", "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


async def test_the_readmes_epayment_flow_works_against_the_demo(demo_tmp: Path) -> None:
    """Every curl line of the README's flow, run as written (on the demo's port): the
    payment ends captured and refunded, with its four events."""
    result = await run_readme_flow(demo_tmp, "/epayment/v1/")
    assert result.returncode == 0, result.stderr
    names = re.findall(r'"name": "([A-Z]+)"', result.stdout)
    assert names == ["CREATED", "AUTHORIZED", "CAPTURED", "REFUNDED"]
    assert '"refundedAmount": {"currency": "NOK", "value": 4900}' in result.stdout


async def test_the_readmes_ecom_flow_works_against_the_demo(demo_tmp: Path) -> None:
    """Every curl line of the README's eCom v2 flow, run as written (on the demo's port):
    the order ends captured and refunded, its log newest first."""
    result = await run_readme_flow(demo_tmp, "/ecomm/v2/")
    assert result.returncode == 0, result.stderr
    operations = re.findall(r'"operation": "([A-Z]+)"', result.stdout)
    assert operations == ["REFUND", "CAPTURE", "RESERVE", "INITIATE"]
    assert '"refundedAmount": 4900' in result.stdout
