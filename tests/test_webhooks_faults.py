"""The relay's store under real faults, in a real proxy process: a store that can be
read but not written (a file-size limit on the process, a tmpfs that runs full), a
store file deleted or replaced under the proxy, and one store named through a symlink
by two proxies."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import resource
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import RunningEmulator, free_port
from tests.processes import ProxyProcess
from tests.test_webhooks_process import relay_config as process_relay_config
from tests.test_webhooks_process import send
from tests.webhook_peers import LegacyApp, eventually, payment_event, stored


def relay_config(
    tmp_path: Path,
    emulator: RunningEmulator,
    port: int,
    app_port: int,
    store: Path,
    **server: object,
) -> Path:
    """A relay of HOOK to the app at ``app_port``, its tokens from the emulator."""
    return process_relay_config(
        tmp_path,
        port,
        app_port,
        store=store,
        token_url=str(emulator.token_url),
        upstream=str(emulator.url),
        **server,
    )


def fetch(process: ProxyProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(process.url(path), timeout=10) as answer:  # noqa: S310
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def store_errors(process: ProxyProcess) -> int:
    """Failed writes of delivery outcomes, from the process's /-/metrics."""
    _, text = fetch(process, "/-/metrics")
    found = re.findall(
        r'^vipps_proxy_webhook_store_errors_total\{op="mark_\w+"\} (\S+)$', text, re.M
    )
    return int(sum(float(n) for n in found))


@contextlib.contextmanager
def small_tmpfs(where: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs at ``where``, unmounted afterwards."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path) -> Path:
    """Write a file into ``folder`` until its filesystem is full."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    written = -1
    try:
        while written != 0:
            written = os.write(fd, b"\0" * 4096)
    except OSError as error:  # the filesystem is full: what was wanted
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler


def store_failures(log: str) -> dict[str, int]:
    """``webhook_store_failed`` lines per op."""
    lines = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    found: dict[str, int] = {}
    for line in lines:
        if line.get("event") == "webhook_store_failed":
            found[line["op"]] = found.get(line["op"], 0) + 1
    return found


class WriteFault:
    """Stops the proxy's writes to its store (``start``) and lets them go on (``stop``)."""

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind, self.folder = kind, folder
        self.filler: Path | None = None
        self.pid = 0

    def start(self, process: ProxyProcess) -> None:
        self.pid = process.process.pid
        if self.kind == "fsize":  # no file of the process may grow past its first byte
            hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)[1]
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (1, hard))
        else:
            self.filler = fill(self.folder)

    def stop(self) -> None:
        if self.kind == "fsize" and self.pid:
            hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)[1]
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (hard, hard))
            self.pid = 0
        elif self.filler is not None:
            self.filler.unlink()
            self.filler = None


@pytest.fixture(params=["fsize", "tmpfs"])
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[WriteFault]:
    if request.param == "fsize":
        yield WriteFault("fsize", tmp_path)
        return
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with small_tmpfs(tmp_path / "disk") as disk:
        yield WriteFault("tmpfs", disk)


async def test_a_store_that_cannot_write_never_makes_the_relay_resend(
    tmp_path: Path, emulator: RunningEmulator, aiohttp_server: Any, fault: WriteFault
) -> None:
    """Three events wait (the app fails them); then the store can read but not write,
    and the app takes them: each arrives once, its outcome is held and written again
    later, never sent again meanwhile; a new event gets 503 and /-/ready 503; once the
    store can write, the outcomes are recorded and the proxy is ready. Store errors
    are counted and logged without tracebacks, one line per kind per 10 s."""
    port, app_port = free_port(), free_port()
    store = fault.folder / "events.sqlite3"
    app = LegacyApp(failing={"order-0", "order-1", "order-2"})
    await aiohttp_server(app.app(), host="127.0.0.1", port=app_port)
    config = relay_config(tmp_path, emulator, port, app_port, store)
    process = await asyncio.to_thread(ProxyProcess, config, port, tmp_path / "proxy.log", pipe=True)
    bodies = [payment_event(f"order-{n}") for n in range(3)]
    try:
        for body in bodies:
            assert await asyncio.to_thread(send, process, body) == 200
        await eventually(lambda: len(app.received) >= 3, "first attempts", 30)
        assert (await asyncio.to_thread(fetch, process, "/-/ready"))[0] == 200
        fault.start(process)
        before = len(app.received)
        app.failing.clear()
        started = time.monotonic()
        # every outcome failed to be written, and was written again (and failed) once
        await eventually(lambda: store_errors(process) >= 6, "held outcomes retried", 90)
        late = [r.body for r in app.received[before:]]
        assert all(late.count(body) <= 1 for body in bodies), [late.count(b) for b in bodies]
        assert await asyncio.to_thread(send, process, payment_event("order-new")) == 503
        assert (await asyncio.to_thread(fetch, process, "/-/ready"))[0] == 503
        fault.stop()
        await eventually(lambda: len(stored(store, "delivered")) == 3, "outcomes written", 90)
        await eventually(
            lambda: fetch(process, "/-/ready")[0] == 200, "ready once the store commits", 30
        )
        elapsed = time.monotonic() - started
    finally:
        process.close()
        fault.stop()
    late = [r.body for r in app.received[before:]]
    assert [late.count(body) for body in bodies] == [1, 1, 1]
    log = process.log_path.read_text()
    failures = store_failures(log)
    assert failures
    assert all(count <= elapsed / 10 + 1 for count in failures.values()), failures
    assert "Traceback" not in log
    assert '"exception"' not in log


async def test_two_proxies_naming_one_store_through_a_symlink_deliver_each_event_once(
    tmp_path: Path, emulator: RunningEmulator, aiohttp_server: Any
) -> None:
    """One proxy names the store by its real path, the other through a symlink: one
    lease, so one deliverer, and each event reaches the app once."""
    app_port = free_port()
    app = LegacyApp()
    await aiohttp_server(app.app(), host="127.0.0.1", port=app_port)
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "events.sqlite3"
    link = tmp_path / "link.sqlite3"
    link.symlink_to(real)
    processes: list[ProxyProcess] = []
    bodies = [payment_event(f"order-{n}") for n in range(20)]
    try:
        for name, store in (("real", real), ("link", link)):
            port = free_port()
            config = relay_config(tmp_path, emulator, port, app_port, store)
            processes.append(
                await asyncio.to_thread(ProxyProcess, config, port, tmp_path / f"{name}.log")
            )
        for n, body in enumerate(bodies):
            assert await asyncio.to_thread(send, processes[n % 2], body) == 200
        await eventually(lambda: len(stored(real, "delivered")) == 20, "all delivered", 60)
    finally:
        for process in processes:
            process.close()
    strangers = [got for got in app.received if got.body not in bodies]
    assert not strangers, strangers  # method, path and headers say who sent them
    assert sorted(app.bodies()) == sorted(bodies)
    started = sum(p.log_path.read_text().count('"webhook_delivery_started"') for p in processes)
    assert started == 1


def delete(store: Path) -> None:
    for path in store.parent.glob(store.name + "*"):
        path.unlink()


def replace(store: Path) -> None:
    other = store.parent / "other" / store.name
    other.parent.mkdir()
    stored(other)  # creates it, empty
    shutil.copy(other, store.parent / "replacement")
    os.replace(store.parent / "replacement", store)


@pytest.mark.parametrize("lose", [delete, replace], ids=["deleted", "replaced"])
async def test_an_event_sent_after_the_store_file_is_lost_is_not_acknowledged(
    tmp_path: Path, emulator: RunningEmulator, lose: Callable[[Path], None]
) -> None:
    """The store files are deleted, or another file is renamed over the store, under
    the proxy: the next event gets 503 (it went into a file no start would read), an
    error line says so, and the store is reopened at its path, where the event sent
    again is kept (and nothing of the old file's WAL)."""
    port = free_port()
    store = tmp_path / "events.sqlite3"
    config = relay_config(tmp_path, emulator, port, free_port(), store)
    process = await asyncio.to_thread(ProxyProcess, config, port, tmp_path / "proxy.log")
    try:
        assert await asyncio.to_thread(send, process, payment_event("order-1")) == 200
        await asyncio.to_thread(lose, store)
        body = payment_event("order-2")
        # 503 when the receiver is first to see the loss; on a busy machine the deliverer
        # may have reopened the store at its path first, and then the event goes there.
        first = await asyncio.to_thread(send, process, body)
        assert first in (200, 503)
        if first == 503:
            assert await asyncio.to_thread(send, process, body) == 200
    finally:
        process.close()
    assert [event.body for event in stored(store)] == [body]
    if first == 503:
        assert store_failures(process.log_path.read_text()) == {"file_check": 1}


def send_until_acknowledged(process: ProxyProcess, body: bytes) -> int:
    """A worker whose store file is gone answers 503 once, as Vipps would see."""
    statuses = [send(process, body) for _ in range(3)]
    return 200 if 200 in statuses else statuses[-1]


async def test_with_two_workers_a_deleted_store_keeps_one_deliverer(
    tmp_path: Path, emulator: RunningEmulator, aiohttp_server: Any
) -> None:
    """The store and its lock file are deleted under two workers: the deliverer gives
    up its lock on the deleted file and the lease is taken anew on the new one, so
    events stored after it reach the app once each."""
    port, app_port = free_port(), free_port()
    app = LegacyApp()
    await aiohttp_server(app.app(), host="127.0.0.1", port=app_port)
    store = tmp_path / "events.sqlite3"
    config = relay_config(tmp_path, emulator, port, app_port, store, workers=2)
    process = await asyncio.to_thread(ProxyProcess, config, port, tmp_path / "proxy.log")
    bodies = [payment_event(f"after-{n}") for n in range(20)]
    try:
        assert await asyncio.to_thread(send, process, payment_event("before")) == 200
        await eventually(lambda: len(app.received) == 1, "the first delivery", 30)
        await asyncio.to_thread(delete, store)
        for body in bodies:
            assert await asyncio.to_thread(send_until_acknowledged, process, body) == 200
        await eventually(lambda: len(stored(store, "delivered")) == 20, "all delivered", 60)
    finally:
        process.close()
    late = app.bodies()[1:]
    assert sorted(late) == sorted(bodies)
