"""``Store``: every received event, kept in SQLite until the app took it, and after.

WAL journal with ``synchronous=FULL``: an insert has reached the disk when ``add``
returns, so the 2xx that follows it survives a ``kill -9`` or a power cut. Several
processes (workers, the CLI) share the file; SQLite's own locking serialises writes.

An event identical to one already stored (same path and body) is not stored twice.
Events of one hook and one ordering key (a payment's ``reference`` or eCom ``orderId``)
are handed out one at a time, oldest first: a later one waits until the earlier one is
delivered or failed. Events without a key, and events of different hooks, are
independent. ``received_at`` is when the event was acknowledged; a requeue leaves it.

``sqlite3`` blocks, so the async side calls ``run``, which does the work on the store's
one thread; the CLI calls the methods directly. The store keeps a descriptor of the file
it opened, so ``same_file`` can tell whether the configured path still names it (a
store deleted or replaced under a running proxy would take events no start reads).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, ParamSpec, TypeVar

import orjson

State = Literal["pending", "delivered", "failed"]
STATES: Final = ("pending", "delivered", "failed")
P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    hook TEXT NOT NULL,
    path TEXT NOT NULL,
    method TEXT NOT NULL,
    headers BLOB NOT NULL,
    body BLOB NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    ordering_key TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_pending ON events (state, ordering_key, seq);
CREATE TABLE IF NOT EXISTS health (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""
#: A store made before ``received_at`` existed gets it (0: its ``created_at`` counts).
_ADD_RECEIVED_AT: Final = "ALTER TABLE events ADD COLUMN received_at REAL NOT NULL DEFAULT 0"
_SELECT: Final = """
SELECT id, seq, hook, path, method, headers, body, ordering_key, state, attempts,
       next_attempt_at, created_at, last_error, received_at
FROM events e
"""
#: The head of each hook's ordering key: no older pending event shares its hook and key.
_HEADS: Final = (
    _SELECT  # noqa: S608 - constant text only, every value is a parameter
    + """
WHERE state = 'pending' AND next_attempt_at <= ?
  AND (ordering_key = '' OR NOT EXISTS (
      SELECT 1 FROM events o
      WHERE o.state = 'pending' AND o.ordering_key = e.ordering_key AND o.hook = e.hook
        AND o.seq < e.seq))
ORDER BY seq LIMIT ?
"""
)


@dataclass(frozen=True)
class Event:
    """One stored webhook or callback."""

    id: str
    seq: int
    hook: str  # the configured path it arrived on (labels, which deliver_to)
    path: str  # the path and query as received
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    ordering_key: str
    state: State
    attempts: int
    next_attempt_at: float
    created_at: float
    last_error: str
    received_at: float  # when the proxy acknowledged it (a requeue leaves it)


@dataclass(frozen=True)
class Pending:
    """Pending events of one hook, for the metrics."""

    hook: str
    count: int
    oldest_created_at: float


class Store:
    """The SQLite file at ``path``; opened on first use, created if missing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        #: The file opened and its -wal: compared with what the path names.
        self._fds: tuple[int, int | None] | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args)`` on the store's one thread, off the event loop."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="webhook-store")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None
        self.reopen()

    def reopen(self, *, moved: bool = False) -> None:
        """Close the file; the next use opens whatever the path names then.

        ``moved``: the path names another file now. SQLite leaves the old file's
        ``-wal`` (and ``-shm``) beside it, and would read them as the new file's; they
        are set aside (``<store>-wal.moved-<unix time>``, the ``-shm`` removed)."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._fds is None:
            return
        (fd, wal), self._fds = self._fds, None
        try:
            if moved and wal is not None and _names(self._beside("-wal"), os.fstat(wal)):
                os.replace(self._beside("-wal"), self._beside(f"-wal.moved-{int(time.time())}"))
                self._beside("-shm").unlink(missing_ok=True)
        finally:
            os.close(fd)  # after the connection: closing it earlier drops SQLite's locks
            if wal is not None:
                os.close(wal)

    def same_file(self) -> bool:
        """Whether the path still names the open file, and the file still has a name."""
        if self._fds is None:
            return True
        held = os.fstat(self._fds[0])
        return held.st_nlink > 0 and _names(self.path, held)

    def _beside(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Owner-only: events hold bodies and headers. SQLite gives its -wal and -shm
            # files the database file's mode.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
                _add_received_at(db)
            except BaseException:
                os.close(fd)
                raise
            self._db, self._fds = db, (fd, _open_if_there(self._beside("-wal")))
        return self._db

    def add(
        self,
        *,
        hook: str,
        path: str,
        method: str,
        headers: list[tuple[str, str]],
        body: bytes,
        ordering_key: str,
        now: float,
    ) -> tuple[str, bool]:
        """Store an event, committed to disk; its id and whether it is new."""
        digest = hashlib.sha256(b"%s\0%s\0" % (path.encode(), method.encode()) + body)
        event_id = secrets.token_hex(16)
        with self.db as db:
            cursor = db.execute(
                "INSERT INTO events (id, hook, path, method, headers, body, digest, "
                "ordering_key, state, next_attempt_at, created_at, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?) "
                "ON CONFLICT (digest) DO NOTHING",
                (event_id, hook, path, method, orjson.dumps(headers), body,
                 digest.hexdigest(), ordering_key, now, now, now),
            )  # fmt: skip
            if cursor.rowcount == 1:
                return event_id, True
            row = db.execute(
                "SELECT id FROM events WHERE digest = ?", (digest.hexdigest(),)
            ).fetchone()
        return str(row[0]), False

    def due(self, now: float, limit: int = 64) -> list[Event]:
        """Pending events whose time has come, each the oldest of its ordering key."""
        return [_event(row) for row in self.db.execute(_HEADS, (now, limit))]

    def next_attempt_at(self) -> float | None:
        """When the earliest pending event is due (None: nothing pending)."""
        row = self.db.execute(
            "SELECT min(next_attempt_at) FROM events WHERE state = 'pending'"
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def mark_delivered(self, event_id: str, attempts: int) -> None:
        self._set(event_id, "delivered", attempts, 0.0, "")

    def mark_retry(self, event_id: str, attempts: int, next_at: float, error: str) -> None:
        self._set(event_id, "pending", attempts, next_at, error)

    def mark_failed(self, event_id: str, attempts: int, error: str) -> None:
        self._set(event_id, "failed", attempts, 0.0, error)

    def _set(self, event_id: str, state: State, attempts: int, next_at: float, error: str) -> None:
        with self.db as db:
            db.execute(
                "UPDATE events SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ? "
                "WHERE id = ?",
                (state, attempts, next_at, error, event_id),
            )

    def events(self, state: State | None = None, limit: int | None = 1000) -> list[Event]:
        """Stored events, oldest first, optionally in one state; ``limit`` None: all."""
        where, args = ("", ()) if state is None else ("WHERE state = ? ", (state,))
        rows = self.db.execute(_SELECT + where + "ORDER BY seq LIMIT ?", (*args, limit or -1))
        return [_event(row) for row in rows]

    def count(self, state: State | None = None) -> int:
        """How many events are stored, optionally in one state."""
        if state is None:
            return int(self.db.execute("SELECT count(*) FROM events").fetchone()[0])
        query = "SELECT count(*) FROM events WHERE state = ?"
        return int(self.db.execute(query, (state,)).fetchone()[0])

    def overtaken(self, event_id: str | None) -> int:
        """How many of the events a requeue of ``event_id`` (None: every failed one)
        would send have a later event of their hook and key already delivered: each
        will reach the app after those."""
        which = "e.state = 'failed'" if event_id is None else "e.id = ?"
        row = self.db.execute(
            "SELECT count(*) FROM events e WHERE "  # noqa: S608 - constant text only
            + which
            + " AND e.ordering_key != '' AND EXISTS (SELECT 1 FROM events o "
            "WHERE o.state = 'delivered' AND o.hook = e.hook "
            "AND o.ordering_key = e.ordering_key AND o.seq > e.seq)",
            () if event_id is None else (event_id,),
        ).fetchone()
        return int(row[0])

    def requeue(self, event_id: str | None, now: float) -> int:
        """Make one event (any state), or every failed one (None), pending and due now;
        ``created_at`` starts again, so each gets a fresh ``retry_for``."""
        update = (
            "UPDATE events SET state = 'pending', attempts = 0, next_attempt_at = ?, "
            "created_at = ?, last_error = '' WHERE "
        )
        with self.db as db:
            if event_id is None:
                cursor = db.execute(update + "state = 'failed'", (now, now))
            else:
                cursor = db.execute(update + "id = ?", (now, now, event_id))
        return cursor.rowcount

    def prune(self, before: float) -> int:
        """Forget delivered events that arrived before ``before``; failed ones stay."""
        with self.db as db:
            cursor = db.execute(
                "DELETE FROM events WHERE state = 'delivered' AND created_at < ?", (before,)
            )
        return cursor.rowcount

    def probe(self, now: float) -> None:
        """Commit a one-row write: whether the store can take events again."""
        with self.db as db:
            db.execute("INSERT OR REPLACE INTO health (id, at) VALUES (1, ?)", (now,))

    def backlog(self) -> dict[str, int]:
        """Events waiting or failed, per hook: what ``max_pending`` bounds."""
        rows = self.db.execute(
            "SELECT hook, count(*) FROM events WHERE state IN ('pending', 'failed') GROUP BY hook"
        )
        return {str(hook): int(count) for hook, count in rows}

    def pending(self) -> list[Pending]:
        rows = self.db.execute(
            "SELECT hook, count(*), min(created_at) FROM events WHERE state = 'pending' "
            "GROUP BY hook"
        )
        return [Pending(str(h), int(n), float(t)) for h, n, t in rows]


def _add_received_at(db: sqlite3.Connection) -> None:
    """The column, in a store made before it existed (another process may add it first)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    if "received_at" not in columns:
        try:
            db.execute(_ADD_RECEIVED_AT)
        except sqlite3.OperationalError:
            if "received_at" not in {row[1] for row in db.execute("PRAGMA table_info(events)")}:
                raise


def _names(path: Path, held: os.stat_result) -> bool:
    """Whether ``path`` names the file ``held`` describes."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _open_if_there(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _event(row: Any) -> Event:
    (event_id, seq, hook, path, method, headers, body, key, state, attempts, nxt, created,
     error, received) = row  # fmt: skip
    return Event(
        id=event_id,
        seq=seq,
        hook=hook,
        path=path,
        method=method,
        headers=tuple((str(k), str(v)) for k, v in orjson.loads(headers)),
        body=bytes(body),
        ordering_key=key,
        state=state,
        attempts=attempts,
        next_attempt_at=nxt,
        created_at=created,
        last_error=error,
        received_at=received or created,
    )
