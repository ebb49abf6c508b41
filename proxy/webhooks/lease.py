"""``Lease``: which process delivers. Every worker receives; exactly one delivers.

An exclusive ``flock`` on a file beside the store: held by one open file at a time,
across processes, and released by the kernel when its holder dies (even by
``kill -9``), so another worker takes over on its next try. The lock file sits beside
the store's resolved path (symlinks followed), so proxies that name one store through
different paths still share one lease. (Not on the store itself: SQLite's own POSIX
locks on it would be dropped when this process closed a second descriptor of it.)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Lease:
    """The delivery lease for the store at ``store_path``."""

    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        """``<store>.lock`` beside the file the store path resolves to now."""
        store = Path(os.path.realpath(self.store_path))
        return store.with_name(store.name + ".lock")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lease if it is free; True while this process holds it."""
        if self._fd is not None:
            return True
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        """Held, and on the file the lock path names (not deleted, not replaced): a
        lock on a file no other process can open any more excludes nobody."""
        if self._fd is None:
            return False
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            return False
        return os.path.samestat(os.fstat(self._fd), named)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the lock
            self._fd = None
