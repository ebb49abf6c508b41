"""The command line: run, check, demo, emulator, webhooks. Only loads config and starts things."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Sequence
from importlib import resources

from proxy.config import Config, ConfigError, describe, load_config, parse_config

DEFAULT_CONFIG = "config/proxy.toml"
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = args.command or "run"
    if command == "emulator":
        return _emulator(args.host, args.port, args.admin_port, args.token_lifetime)
    if command == "demo":
        return _demo(args.port, args.emulator_port, args.app_port)
    try:
        config = load_config(_config_path(args.config))
    except ConfigError as exc:
        print(f"vipps-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if command == "check":
        return _check(config)
    if command == "webhooks":
        from proxy.webhooks import commands

        return commands.run(config, args)
    from proxy.server import run

    return run(config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vipps-proxy", description="Authenticating reverse proxy for the Vipps APIs."
    )
    parser.add_argument(
        "--config", help=f"config file (default: $VIPPS_PROXY_CONFIG, else {DEFAULT_CONFIG})"
    )
    sub = parser.add_subparsers(dest="command")
    for name, text in (("run", "run the proxy"), ("check", "validate the config and exit")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    demo = sub.add_parser("demo", help="the built-in Vipps emulator with the proxy in front")
    demo.add_argument("--port", type=int, default=8080)
    demo.add_argument("--emulator-port", type=int, default=8081)
    demo.add_argument("--app-port", type=int, default=0, help="the demo app (0: any free)")
    emu = sub.add_parser("emulator", help="the Vipps emulator alone, for offline work")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8081)
    emu.add_argument("--admin-port", type=int, default=0, help="fault switches (0: off)")
    emu.add_argument("--token-lifetime", type=float, default=3600.0)
    from proxy.webhooks.commands import add_parser

    add_parser(sub)
    return parser


def _config_path(given: str | None) -> str:
    return given or os.environ.get("VIPPS_PROXY_CONFIG") or DEFAULT_CONFIG


def _check(config: Config) -> int:
    print(json.dumps(describe(config), indent=2))
    print(f"vipps-proxy: config OK: {config.source}", file=sys.stderr)
    return 0


def _demo(port: int, emulator_port: int, app_port: int) -> int:
    emulator_url = f"http://127.0.0.1:{emulator_port}"
    text = resources.files("proxy").joinpath("demo.toml").read_text(encoding="utf-8")
    import tempfile
    import tomllib

    from proxy.demo import DemoWebhooks, free_port, run_demo

    hooks = DemoWebhooks(
        app_port=app_port or free_port(),
        secret=secrets.token_urlsafe(32),
        store=os.path.join(tempfile.mkdtemp(prefix="vipps-proxy-demo-"), "webhooks.sqlite3"),
    )
    env = {
        **os.environ,
        "DEMO_EMULATOR_URL": emulator_url,
        "DEMO_APP_URL": f"http://127.0.0.1:{hooks.app_port}",
        "DEMO_WEBHOOK_SECRET": hooks.secret,
        "DEMO_STORE": hooks.store,
    }
    config = parse_config(tomllib.loads(text), env, source="demo.toml")
    server = config.server.__class__(**{**config.server.__dict__, "port": port})
    config = config.__class__(**{**config.__dict__, "server": server})
    return run_demo(config, emulator_port, curl_line(port), hooks)


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


def _emulator(host: str, port: int, admin_port: int, lifetime: float) -> int:
    from proxy.demo import run_emulator

    return run_emulator(host, port, admin_port, lifetime)
