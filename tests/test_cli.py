"""The command line a newcomer reads: every option explained, no flag silently ignored."""

from __future__ import annotations

import re

import aiohttp
import orjson
import pytest

from .processes import read_until, running_demo
from .test_config import run_cli

OPTIONS = {
    "demo": {
        "--port": "8080",
        "--emulator-port": "8081",
        "--log-format": "console",
        "--auto-approve": "5",
        "--app-port": "0",
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
    async with running_demo("--log-format", "json") as (demo, _):
        line = await read_until(demo, b"proxy_started")
    assert orjson.loads(line)["event"] == "proxy_started"


async def test_demo_payments_are_approved_after_auto_approve_seconds() -> None:
    """The demo's emulator approves a payment by itself (here at once: --auto-approve 0)."""
    async with (
        running_demo("--auto-approve", "0") as (demo, port),
        aiohttp.ClientSession() as client,
    ):
        await read_until(demo, b"Ctrl-C stops the demo")
        payments = f"http://127.0.0.1:{port}/epayment/v1/payments"
        body = {
            "amount": {"currency": "NOK", "value": 4900},
            "paymentMethod": {"type": "WALLET"},
            "reference": "demo-approved-1",
            "userFlow": "WEB_REDIRECT",
            "returnUrl": "https://example.com/return",
        }
        headers = {"Idempotency-Key": "demo-approved-1"}
        async with client.post(payments, json=body, headers=headers) as created:
            assert created.status == 201
        async with client.get(f"{payments}/demo-approved-1") as fetched:
            assert (await fetched.json())["state"] == "AUTHORIZED"
