"""`--version`, and help texts for every `webhooks` sub-command and option."""

from __future__ import annotations

from importlib import metadata

import pytest

from proxy import __version__
from tests.test_cli import option_help
from tests.test_config import run_cli

WEBHOOKS_COMMANDS = [("webhooks",), ("webhooks", "list"), ("webhooks", "retry")]
WEBHOOKS_COMMANDS += [("webhooks", "register")]


def test_version_prints_the_installed_version() -> None:
    """`vipps-proxy --version` prints the name and the version pip installed, exit 0."""
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout == f"vipps-proxy {metadata.version('vipps-proxy')}\n"
    assert __version__ == metadata.version("vipps-proxy")


@pytest.mark.parametrize("command", WEBHOOKS_COMMANDS, ids=" ".join)
def test_webhooks_commands_describe_themselves(command: tuple[str, ...]) -> None:
    """Each `webhooks` command's --help opens with a sentence saying what it does."""
    done = run_cli(*command, "--help")
    assert done.returncode == 0
    description = done.stdout.split("\n\n", 2)[1]
    assert not description.startswith(("positional arguments:", "options:")), done.stdout
    assert description.rstrip().endswith("."), description


@pytest.mark.parametrize("command", WEBHOOKS_COMMANDS, ids=" ".join)
def test_every_webhooks_option_has_a_help_text(command: tuple[str, ...]) -> None:
    """No option of a `webhooks` command is listed bare (its name and nothing else)."""
    done = run_cli(*command, "--help")
    for option, text in option_help(done.stdout).items():
        words = [w for w in text.split() if not w.startswith("-") and not w.isupper()]
        words = [w for w in words if not w.startswith("{") and not w.startswith("[")]
        assert words, f"{' '.join(command)} {option}: no help text"
