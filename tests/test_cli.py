"""The command line a newcomer reads: every option explained, no flag silently ignored."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import orjson
import pytest

from .conftest import free_port
from .test_config import run_cli

OPTIONS = {
    "demo": {
        "--port": "8080",
        "--emulator-port": "8081",
        "--log-format": "console",
        "--auto-approve": "5",
    },
    "emulator": {
        "--host": "127.0.0.1",
        "--port": "8081",
        "--admin-port": "0",
        "--token-lifetime": "3600",
        "--auto-approve": "none",
    },
}


def option_help(text: str) -> dict[str, str]:
    """argparse's options section: each long option and the help text that follows it."""
    options = text.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", options)
    found = {}
    for entry in entries:
        names = re.findall(r"(--[a-z-]+)", entry.split("  ", 1)[0])
        if names:
            found[names[0]] = " ".join(entry.split())
    return found


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_every_option_of_the_command_has_a_line_and_its_default(command: str) -> None:
    """`demo --help`, `emulator --help`: each option says what it is and its default."""
    result = run_cli(command, "--help")
    assert result.returncode == 0
    found = option_help(result.stdout)
    assert set(found) - {"--help"} == set(OPTIONS[command])
    for option, default in OPTIONS[command].items():
        assert f"(default: {default}" in found[option], found[option]


@pytest.mark.parametrize("command", ["demo", "emulator"])
def test_config_is_refused_where_it_would_be_ignored(command: str) -> None:
    """`vipps-proxy --config x.toml demo` says --config does not apply, exit 2."""
    result = run_cli("--config", "x.toml", command)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"vipps-proxy: --config does not apply to {command}"]


async def test_demo_logs_json_lines_with_log_format_json() -> None:
    """`demo --log-format json`: the proxy's start-up line is one JSON object."""
    port, emulator_port = free_port(), free_port()
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "demo",
        "--port",
        str(port),
        "--emulator-port",
        str(emulator_port),
        "--log-format",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert demo.stdout is not None
    try:
        line = b""
        while b"proxy_started" not in line:
            line = await asyncio.wait_for(demo.stdout.readline(), 20)
            assert line, "demo exited before it started the proxy"
        assert orjson.loads(line)["event"] == "proxy_started"
    finally:
        demo.send_signal(signal.SIGTERM)
        await asyncio.wait_for(demo.wait(), 20)
