"""The command line: run, check, demo, emulator, webhooks. Only loads config and starts things."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Sequence

from proxy import __version__
from proxy.config import LOG_FORMATS, Config, ConfigError, describe, load_config
from proxy.emulator.settings import DEMO_MERCHANT_SERIAL_NUMBER
from proxy.startup import EXIT_STARTUP, StartupError

DEFAULT_CONFIG = "config/proxy.toml"
EXIT_CONFIG = 2
EXIT_CHECK_FAILED = 1
DEMO_AUTO_APPROVE = 5.0
CONFIG_HELP = f"config file (default: $VIPPS_PROXY_CONFIG, else {DEFAULT_CONFIG})"
DEMO_HELP = "the built-in Vipps emulator with the proxy in front"
DEMO_TEXT = (
    "The built-in Vipps emulator on 127.0.0.1:8081 and the proxy in front of it on "
    "127.0.0.1:8080, with the emulator's demo credentials (MSN "
    f"{DEMO_MERCHANT_SERIAL_NUMBER}); prints a curl line that creates a payment. Its "
    "own config: --config does not apply."
)
ONLINE_HELP = (
    "also fetch a token for each credential set and connect to each upstream and "
    "deliver_to (TLS verified, no API called); exit 1 if any fails"
)
EMULATOR_HELP = "the Vipps emulator alone, for offline work"
EMULATOR_TEXT = (
    "The Vipps emulator alone: token endpoints, ePayment, Checkout and Login in the real "
    "shapes, for developing offline. It logs JSON lines."
)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except StartupError as exc:
        print(f"vipps-proxy: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def _command(args: argparse.Namespace) -> int:
    command = args.command or "run"
    if command in ("demo", "emulator") and args.config:
        print(f"vipps-proxy: --config does not apply to {command}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "emulator":
        return _emulator(args)
    if command == "demo":
        return _demo(
            args.port, args.emulator_port, args.log_format, args.auto_approve, args.app_port
        )
    # `webhooks register` writes the secret file a [[webhooks]] names: it may not exist yet
    registering = command == "webhooks" and args.action == "register"
    try:
        config = load_config(_config_path(args.config), pending_webhook_secrets=registering)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"vipps-proxy: {line}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "check":
        return _check(config, args.online)
    if command == "webhooks":
        from proxy.webhooks import commands

        return commands.run(config, args)
    from proxy.server import run

    return run(config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vipps-proxy", description="Authenticating reverse proxy for the Vipps APIs."
    )
    parser.add_argument("--config", help=CONFIG_HELP)
    parser.add_argument("--version", action="version", version=f"vipps-proxy {__version__}")
    sub = parser.add_subparsers(dest="command")
    for name, text in (("run", "run the proxy"), ("check", "validate the config and exit")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", dest="config", default=argparse.SUPPRESS, help=CONFIG_HELP)
        if name == "check":
            cmd.add_argument("--online", action="store_true", help=ONLINE_HELP)
    _demo_options(sub.add_parser("demo", help=DEMO_HELP, description=DEMO_TEXT))
    _emulator_options(sub.add_parser("emulator", help=EMULATOR_HELP, description=EMULATOR_TEXT))
    from proxy.webhooks.commands import add_parser

    add_parser(sub, CONFIG_HELP)
    return parser


def _demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--port", type=int, default=8080, help="the proxy's port on 127.0.0.1 (default: 8080)"
    )
    demo.add_argument(
        "--emulator-port",
        type=int,
        default=8081,
        help="the emulator's port on 127.0.0.1 (default: 8081)",
    )
    demo.add_argument(
        "--auto-approve",
        type=float,
        default=DEMO_AUTO_APPROVE,
        metavar="SECONDS",
        help="the emulator approves each payment this long after its creation, as if the "
        f"user said yes in the app (default: {DEMO_AUTO_APPROVE:g})",
    )
    demo.add_argument(
        "--app-port",
        type=int,
        default=0,
        help="the demo app that prints the webhooks it gets (default: 0, any free port)",
    )
    demo.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="console",
        help="console (readable) or json (one object per line) (default: console)",
    )


def _emulator_options(emu: argparse.ArgumentParser) -> None:
    emu.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    emu.add_argument("--port", type=int, default=8081, help="the API's port (default: 8081)")
    emu.add_argument(
        "--admin-port",
        type=int,
        default=0,
        help="serve the fault switches and /stats on this port (default: 0, off)",
    )
    emu.add_argument(
        "--token-lifetime",
        type=float,
        default=3600.0,
        help="seconds an issued access token works (default: 3600)",
    )
    emu.add_argument(
        "--auto-approve",
        type=float,
        default=None,
        metavar="SECONDS",
        help="approve each payment and eCom order this long after its creation (default: "
        "none: payments stay CREATED until POST /epayment/v1/test/payments/{reference}/approve"
        ", eCom orders INITIATE until the eCom test approve or the admin app's approve)",
    )


def _config_path(given: str | None) -> str:
    return given or os.environ.get("VIPPS_PROXY_CONFIG") or DEFAULT_CONFIG


def _check(config: Config, online: bool) -> int:
    from proxy import check

    try:
        check.check_store(config)
    except ConfigError as exc:
        print(f"vipps-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not online:
        print(json.dumps(describe(config), indent=2))
    for line in check.msn_rules(config):
        print(f"vipps-proxy: {line}", file=sys.stderr)
    print(f"vipps-proxy: config OK: {config.source}", file=sys.stderr)
    if not online:
        return 0
    outcomes = asyncio.run(check.online(config))
    for outcome in outcomes:
        print(outcome.line(), flush=True)
    return 0 if all(o.ok for o in outcomes) else EXIT_CHECK_FAILED


def _demo(
    port: int, emulator_port: int, log_format: str, auto_approve: float, app_port: int
) -> int:
    from proxy.demo import DemoPorts, demo_config, demo_folder, run_demo

    with demo_folder() as folder:
        ports = DemoPorts(port, emulator_port, app_port)
        config, hooks = demo_config(folder, ports, log_format)
        return run_demo(config, emulator_port, auto_approve, curl_line(port), hooks)


def curl_line(port: int) -> str:
    """A one-line curl command that creates a payment through the proxy."""
    reference = f"demo-{secrets.token_hex(6)}"
    body = (
        '{"amount":{"currency":"NOK","value":4900},"paymentMethod":{"type":"WALLET"},'
        f'"reference":"{reference}","userFlow":"WEB_REDIRECT",'
        '"returnUrl":"https://example.com/return","paymentDescription":"Demo order"}'
    )
    return (
        f"curl -s -X POST http://127.0.0.1:{port}/epayment/v1/payments "
        f"-H 'Content-Type: application/json' -H 'Idempotency-Key: {reference}' "
        f"-d '{body}'"
    )


def _emulator(args: argparse.Namespace) -> int:
    from proxy.demo import run_emulator
    from proxy.emulator import EmulatorSettings

    settings = EmulatorSettings(token_lifetime=args.token_lifetime, auto_approve=args.auto_approve)
    return run_emulator(args.host, args.port, args.admin_port, settings)
