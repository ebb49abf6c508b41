"""The event store on a real SQLite file: durable settings, dedupe, order per payment."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.webhooks.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "var" / "events.sqlite3")
    yield opened
    opened.close()


def add(store: Store, body: bytes, key: str = "", path: str = "/hook", now: float = 100.0) -> str:
    event_id, _ = store.add(
        hook="/hook",
        path=path,
        method="POST",
        headers=[("Content-Type", "application/json")],
        body=body,
        ordering_key=key,
        now=now,
    )
    return event_id


def test_the_file_is_created_with_wal_and_full_sync(store: Store) -> None:
    """WAL journal and synchronous=FULL: a commit is on disk when add() returns."""
    add(store, b"x")
    assert store.path.is_file()
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_the_store_files_are_readable_by_their_owner_only(store: Store) -> None:
    add(store, b"x")
    for path in store.path.parent.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_an_event_is_kept_byte_for_byte_with_its_headers(store: Store) -> None:
    body = bytes(range(256))
    event_id = add(store, body, path="/hook?x=1")
    (event,) = store.events()
    assert (event.id, event.body, event.path, event.state) == (
        event_id,
        body,
        "/hook?x=1",
        "pending",
    )
    assert event.headers == (("Content-Type", "application/json"),)


def test_the_same_path_and_body_is_stored_once(store: Store) -> None:
    first, new = store.add(
        hook="/hook", path="/hook", method="POST", headers=[], body=b"a", ordering_key="", now=1
    )
    again, new_again = store.add(
        hook="/hook", path="/hook", method="POST", headers=[("X", "1")], body=b"a",
        ordering_key="", now=2,
    )  # fmt: skip
    assert new
    assert not new_again
    assert first == again
    assert len(store.events()) == 1
    add(store, b"a", path="/other")
    assert len(store.events()) == 2  # another path is another event


def test_only_the_oldest_pending_event_of_a_reference_is_due(store: Store) -> None:
    a1, a2, b1 = add(store, b"a1", "A"), add(store, b"a2", "A"), add(store, b"b1", "B")
    assert [e.id for e in store.due(now=200)] == [a1, b1]
    store.mark_delivered(a1, 1)
    assert [e.id for e in store.due(now=200)] == [a2, b1]


def test_a_waiting_event_still_holds_back_its_reference(store: Store) -> None:
    """An event in backoff is not due, and the later one of its reference waits too."""
    a1, _a2, b1 = add(store, b"a1", "A"), add(store, b"a2", "A"), add(store, b"b1", "B")
    store.mark_retry(a1, 1, next_at=500, error="status_500")
    assert [e.id for e in store.due(now=200)] == [b1]
    assert store.next_attempt_at() == 100


def test_a_failed_event_no_longer_blocks_its_reference(store: Store) -> None:
    a1, a2 = add(store, b"a1", "A"), add(store, b"a2", "A")
    store.mark_failed(a1, 9, "status_500")
    assert [e.id for e in store.due(now=200)] == [a2]


def test_events_without_a_reference_do_not_wait_for_each_other(store: Store) -> None:
    x, y = add(store, b"x"), add(store, b"y")
    assert [e.id for e in store.due(now=200)] == [x, y]


def test_retry_makes_failed_events_pending_and_due_now(store: Store) -> None:
    a, b = add(store, b"a"), add(store, b"b")
    store.mark_failed(a, 5, "timeout")
    store.mark_delivered(b, 1)
    assert store.requeue(None, now=300) == 1
    (again,) = store.events("pending")
    assert (again.id, again.attempts, again.next_attempt_at, again.created_at) == (a, 0, 300, 300)
    assert store.requeue(b, now=300) == 1  # by id, whatever its state
    assert store.requeue("no-such-id", now=300) == 0


def test_pending_counts_and_oldest_per_hook(store: Store) -> None:
    add(store, b"a", now=10)
    add(store, b"b", now=20)
    (row,) = store.pending()
    assert (row.hook, row.count, row.oldest_created_at) == ("/hook", 2, 10)


def test_another_process_sees_a_committed_event(store: Store) -> None:
    """Committed means visible to any other connection at once (the CLI, other workers)."""
    event_id = add(store, b"x")
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("SELECT id FROM events").fetchall() == [(event_id,)]
    finally:
        other.close()


def test_prune_forgets_old_delivered_events_only(store: Store) -> None:
    old, old_failed, new = add(store, b"a", now=10), add(store, b"b", now=10), add(store, b"c")
    store.mark_delivered(old, 1)
    store.mark_failed(old_failed, 3, "timeout")
    store.mark_delivered(new, 1)
    assert store.prune(before=50) == 1
    assert {e.id for e in store.events()} == {old_failed, new}
