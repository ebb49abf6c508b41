"""``vipps-proxy webhooks list`` and ``retry`` on a real store file, as an operator runs
them: safe to read on a terminal whatever a sender put in an event, honest about what
they left out or what a retry will do to a payment's order."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.webhooks.commands import as_json, describe
from proxy.webhooks.store import Event, Store
from tests.conftest import RunningEmulator
from tests.test_webhooks_loop import cli, write_cli_config
from tests.webhook_peers import ECOM, HOOK

FORGED = "\x1b[2J\x1b[H...\r\n0123abcd  delivered  attempts=1  reference=fake\x07\x9b2J\u202e"


def store_with(config: Path, *references: str, hook: str = HOOK) -> list[str]:
    """Events of ``references`` in the store ``config`` names, oldest first; their ids."""
    store = Store(config.parent / "events.sqlite3")
    store.db.execute("PRAGMA synchronous=OFF")  # set-up speed only: nothing here crashes
    try:
        return [
            store.add(
                hook=hook,
                path=hook,
                method="POST",
                headers=[],
                body=b'{"n":%d}' % n,
                ordering_key=reference,
                now=1_800_000_000 + n,
            )[0]
            for n, reference in enumerate(references)
        ]
    finally:
        store.close()


def test_list_escapes_control_characters_in_every_field(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """A forged ``reference`` (and path) with escape sequences, CR LF, BEL, C1 and a bidi
    override prints as one line of visible escapes: no screen cleared, no forged line."""
    config = write_cli_config(tmp_path, emulator)
    store_with(config, FORGED, hook=ECOM + "\x1b]0;title\x07")
    listed = cli(config, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 1
    assert not [c for c in listed.stdout if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]
    assert "\u202e" not in listed.stdout
    assert "reference=\\x1b[2J\\x1b[H...\\x0d\\x0a0123abcd" in lines[0]
    assert "\\x07\\x9b2J\\u202e" in lines[0]
    assert "path=/ecom\\x1b]0;title\\x07" in lines[0]


def test_list_json_prints_one_ascii_object_per_event(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """``--json``: one JSON object per line, ASCII only, the reference given back exactly."""
    config = write_cli_config(tmp_path, emulator)
    ids = store_with(config, FORGED, "order-2\x7f", "")
    listed = cli(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.isascii()
    assert "\x7f" not in listed.stdout
    docs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [d["id"] for d in docs] == ids
    assert [d["reference"] for d in docs] == [FORGED, "order-2\x7f", None]
    assert docs[0]["state"] == "pending"
    assert docs[0]["path"] == HOOK
    assert docs[0]["received_at"] == "2027-01-15T08:00:00.000Z"


def test_list_says_how_many_events_it_left_out(emulator: RunningEmulator, tmp_path: Path) -> None:
    """1,000 rows by default, ``--limit N`` or ``--all``; what is not shown is counted on
    stderr (stdout stays the events)."""
    config = write_cli_config(tmp_path, emulator)
    ids = store_with(config, *(f"r-{n}" for n in range(1003)))
    default = cli(config, "list")
    assert len(default.stdout.splitlines()) == 1000
    assert default.stderr.strip() == "3 more event(s) not shown; use --limit N or --all"
    limited = cli(config, "list", "--limit", "2", "--json")
    assert [json.loads(line)["id"] for line in limited.stdout.splitlines()] == ids[:2]
    assert limited.stderr.startswith("1001 more event(s) not shown")
    everything = cli(config, "list", "--all")
    assert len(everything.stdout.splitlines()) == 1003
    assert everything.stderr == ""


def test_list_limit_must_be_a_positive_number(emulator: RunningEmulator, tmp_path: Path) -> None:
    config = write_cli_config(tmp_path, emulator)
    for bad in ("0", "-1", "x"):
        listed = cli(config, "list", "--limit", bad)
        assert listed.returncode == 2
        assert "--limit" in listed.stderr


def test_retry_of_an_event_whose_later_events_were_delivered_says_so(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """The first event of ``order-1`` failed for good and the second was then delivered:
    retrying the first says it will reach the app after the later one; a retry that
    overtakes nothing says nothing of the kind."""
    config = write_cli_config(tmp_path, emulator)
    first, later, alone = store_with(config, "order-1", "order-1", "order-2")
    store = Store(config.parent / "events.sqlite3")
    try:
        store.mark_failed(first, 12, "status_500")
        store.mark_delivered(later, 1)
        store.mark_failed(alone, 12, "status_500")
    finally:
        store.close()
    overtaken = cli(config, "retry", first)
    assert overtaken.returncode == 0
    assert overtaken.stdout.splitlines() == [
        "1 event(s) queued for delivery",
        "note: 1 of them had later events of the same payment already delivered; "
        "each reaches the app after those (see Vipps-Proxy-Received-At)",
    ]
    plain = cli(config, "retry", alone)
    assert plain.stdout.splitlines() == ["1 event(s) queued for delivery"]


@given(st.text(max_size=80), st.text(max_size=20))
@settings(max_examples=300, deadline=None)
def test_any_reference_prints_as_one_safe_line_and_round_trips_in_json(
    reference: str, error: str
) -> None:
    """Whatever a sender names its payment: the line has no control or format character
    and no line break, and ``--json`` gives the reference back exactly."""
    event = Event(
        id="e" * 32, seq=1, hook=HOOK, path=HOOK, method="POST", headers=(), body=b"",
        ordering_key=reference, state="failed", attempts=3, next_attempt_at=0.0,
        created_at=1_800_000_000.0, last_error=error, received_at=1_800_000_000.5,
    )  # fmt: skip
    line = describe(event)
    assert line.splitlines() == [line]
    assert not [c for c in line if unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"}]
    doc = json.loads(as_json(event))
    assert doc["reference"] == (reference or None)
    assert doc["received_at"] == "2027-01-15T08:00:00.500Z"
