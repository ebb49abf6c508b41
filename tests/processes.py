"""Running vipps-proxy as a real separate process, for lifecycle and memory tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO


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

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port = port
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
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
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
