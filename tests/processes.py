"""Running vipps-proxy as a real separate process, for lifecycle and memory tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

from tests.conftest import free_port


def write_config(path: Path, token_url: str, upstream: str, port: int, **server: object) -> Path:
    extra = "".join(f"{k} = {v!r}\n" for k, v in server.items()).replace("'", '"')
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
{extra}
[credentials.main]
token_url = "{token_url}"
client_id = "demo-client-id"
client_secret = "demo-client-secret"
subscription_key = "demo-subscription-key"
merchant_serial_number = "123456"

[[routes]]
prefix = "/"
upstream = "{upstream}"
"""
    )
    return path


class ProxyProcess:
    """``python -m proxy --config FILE`` in its own process, output captured to a file."""

    def __init__(self, config: Path, port: int, log: Path, *, pipe: bool = False) -> None:
        self.port = port
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        #: pipe: output goes through `cat`, so a file-size limit put on the proxy's
        #: process limits its store, not its logging.
        self._cat = (
            subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=self._log) if pipe else None
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(config)],
            stdout=self._cat.stdin if self._cat else self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: `close` ends its workers too
        )
        if self._cat is not None and self._cat.stdin is not None:
            self._cat.stdin.close()  # the proxy holds the pipe's only writing end now
        self.wait_healthy()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_healthy(self, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                with urllib.request.urlopen(self.url("/-/health"), timeout=1) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("proxy never became healthy:\n" + self.output())

    def rss_kib(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field}")

    def terminate(self, timeout: float = 30.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        """SIGKILL the proxy and every process it started: no test leaves a worker behind
        to serve a port or deliver to an address a later test has taken."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self._cat is not None:
            self._cat.wait(10)
        self._log.close()


@asynccontextmanager
async def running_demo(
    *options: str,
    command: Sequence[str] = (sys.executable, "-m", "proxy"),
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`vipps-proxy demo` on free ports with ``options`` (and ``env`` added to the
    environment); its process and the proxy's port. ``command`` is how vipps-proxy is
    run (e.g. an installed one, in ``cwd``)."""
    port, emulator_port = free_port(), free_port()
    demo = await asyncio.create_subprocess_exec(
        *command,
        "demo",
        "--port",
        str(port),
        "--emulator-port",
        str(emulator_port),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    try:
        yield demo, port
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGTERM)
        await asyncio.wait_for(demo.wait(), 20)


async def read_until(demo: asyncio.subprocess.Process, marker: bytes) -> bytes:
    """The demo's first output line holding ``marker``."""
    assert demo.stdout is not None
    line = b""
    while marker not in line:
        line = await asyncio.wait_for(demo.stdout.readline(), 20)
        assert line, f"demo exited before it printed {marker!r}"
    return line
