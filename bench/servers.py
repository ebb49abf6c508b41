"""Starting, checking and stopping every server of a run, each on its CPUs.

A :class:`Fleet` owns the processes it starts and stops them all when it closes
(SIGTERM, then SIGKILL after a few seconds), so an interrupted run leaves nothing behind.
Readiness is polled over loopback HTTP with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

from bench import nginx, procs
from bench.machine import CpuSplit
from bench.tools import Tools
from proxy.emulator import DEMO_SALES_UNITS

READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
REPO: Final = Path(__file__).resolve().parent.parent
#: Direct HTTP, never through an environment proxy.
_OPENER: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerError(Exception):
    """A server did not start or did not answer as it should."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str, method: str = "GET", body: bytes | None = None) -> int:
    """The status of one loopback call, or 0 if it could not be made."""
    request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - loopback
    try:
        with _OPENER.open(request, timeout=2) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


@dataclass
class Server:
    """One started server: its name, base URL and process."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def pids(self) -> list[int]:
        return procs.tree(self.process.pid)


@dataclass
class Fleet:
    """The run's servers; a context manager that stops whatever it started."""

    tools: Tools
    split: CpuSplit
    workdir: Path
    #: Where vipps-proxy's code comes from: this checkout, or another to compare with.
    proxy_source: Path = REPO
    servers: list[Server] = field(default_factory=list)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for server in reversed(self.servers):
            self.stop(server)

    # ------------------------------------------------------------------ generic

    def start(self, name: str, argv: list[str], cpus: str, url: str, source: Path = REPO) -> Server:
        """Start ``argv`` on ``cpus``, importing ``proxy`` and ``bench`` from ``source``."""
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*self.split.prefix(cpus, self.tools.taskset), *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=source,
                env={**os.environ, "PYTHONPATH": str(source)},
            )
        server = Server(name, url, process, log)
        self.servers.append(server)
        return server

    def wait_ready(self, server: Server, path: str = "/", want: int | None = 200) -> None:
        """Until ``path`` answers ``want`` (None: any HTTP answer), the process lives."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise ServerError(f"{server.name} exited: see {server.log}")
            status = http_status(server.url + path)
            if status == want or (want is None and status):
                return
            time.sleep(0.1)
        raise ServerError(f"{server.name} not ready in {READY_TIMEOUT_S:.0f} s: see {server.log}")

    def stop(self, server: Server) -> None:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
            try:
                server.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(STOP_TIMEOUT_S)
        with contextlib.suppress(ValueError):
            self.servers.remove(server)

    # ------------------------------------------------------------------ the parties

    def upstream(self, www: Path) -> Server:
        """nginx answering the small JSON, serving ``www/files`` and taking uploads."""
        port = free_port()
        conf = self.workdir / "upstream.conf"
        conf.write_text(nginx.upstream_conf(self.workdir, port, www))
        return self._nginx("upstream-nginx", conf, port, self.split.load)

    def nginx_proxy(self, upstream: Server, token: str) -> Server:
        port = free_port()
        conf = self.workdir / "proxy.conf"
        key = DEMO_SALES_UNITS[0].subscription_key
        upstream_port = int(upstream.url.rsplit(":", 1)[1])
        conf.write_text(nginx.proxy_conf(self.workdir, port, upstream_port, token, key))
        return self._nginx("nginx-proxy", conf, port, self.split.proxy)

    def _nginx(self, name: str, conf: Path, port: int, cpus: str) -> Server:
        argv = [self.tools.nginx, "-p", str(self.workdir), "-e", "stderr", "-c", str(conf)]
        server = self.start(name, argv, cpus, f"http://127.0.0.1:{port}")
        self.wait_ready(server)
        return server

    def hello(self) -> Server:
        port = free_port()
        argv = [sys.executable, "-m", "bench.hello", "--port", str(port)]
        server = self.start("bare-aiohttp", argv, self.split.proxy, f"http://127.0.0.1:{port}")
        self.wait_ready(server)
        return server

    def emulator(self, name: str, token_lifetime: float) -> Server:
        port = free_port()
        argv = [sys.executable, "-m", "proxy", "emulator", "--port", str(port)]
        argv += ["--token-lifetime", str(token_lifetime)]
        server = self.start(name, argv, self.split.load, f"http://127.0.0.1:{port}")
        self.wait_ready(server, "/accesstoken/get", want=None)
        return server

    def vipps_proxy(self, name: str, emulator: Server, upstream: Server, workers: int) -> Server:
        """vipps-proxy as production runs it: JSON logs at info to a file, metrics on."""
        port = free_port()
        conf = self.workdir / f"{name}.toml"
        conf.write_text(proxy_toml(port, workers, emulator.url, upstream.url))
        cpus = self.split.proxy if workers == 1 else self.split.shared
        argv = [sys.executable, "-m", "proxy", "--config", str(conf)]
        url = f"http://127.0.0.1:{port}"
        server = self.start(name, argv, cpus, url, self.proxy_source)
        self.wait_ready(server, "/-/ready")
        return server


def proxy_toml(port: int, workers: int, emulator_url: str, upstream_url: str) -> str:
    unit = DEMO_SALES_UNITS[0]
    return f"""\
[server]
host = "127.0.0.1"
port = {port}
workers = {workers}
shutdown_timeout = 2

[log]
level = "info"
format = "json"

[credentials.main]
token_url = "{emulator_url}/accesstoken/get"
token_style = "accesstoken"
client_id = "{unit.client_id}"
client_secret = "{unit.client_secret}"
subscription_key = "{unit.subscription_key}"
merchant_serial_number = "{unit.merchant_serial_number}"

[[routes]]
prefix = "/"
upstream = "{upstream_url}"
auth = "bearer"
"""
