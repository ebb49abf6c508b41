"""The proxy as a real process: streaming with flat memory, draining on SIGTERM, the demo."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import RunningEmulator, RunningProxy, free_port
from tests.processes import ProxyProcess, read_until, running_demo, write_config
from tests.webhook_peers import eventually

MIB = 1 << 20


@pytest.fixture
async def proxy_process(emulator: RunningEmulator, tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    port = free_port()
    config = write_config(tmp_path / "proxy.toml", str(emulator.token_url), str(emulator.url), port)
    process = await asyncio.to_thread(ProxyProcess, config, port, tmp_path / "proxy.log")
    yield process
    process.close()


async def pattern(total: int, chunk: int = MIB) -> AsyncIterator[bytes]:
    block = os.urandom(chunk)
    for _ in range(total // chunk):
        yield block


async def test_64_mib_each_way_streams_with_flat_memory(proxy_process: ProxyProcess) -> None:
    """64 MiB up and 64 MiB down pass whole while the proxy's peak RSS grows < 24 MiB."""
    size = 64 * MIB
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_process.url("/echo/warm")) as response:
            assert response.status == 200
        before = proxy_process.rss_kib("VmRSS")
        headers = {"Content-Length": str(size)}
        async with client.put(
            proxy_process.url("/echo/upload"), data=pattern(size), headers=headers
        ) as response:
            assert (await response.json())["body_length"] == size
        received = 0
        async with client.get(proxy_process.url(f"/download/{size}")) as response:
            async for chunk in response.content.iter_chunked(MIB):
                received += len(chunk)
        assert received == size
    peak = proxy_process.rss_kib("VmHWM")
    assert peak - before < 24 * 1024, f"RSS grew from {before} KiB to a peak of {peak} KiB"


async def reached_upstream(emulator: RunningEmulator, path: str) -> None:
    """Until the emulator has received a call to ``path``; at most 30 s (a busy machine)."""
    async with asyncio.timeout(30):
        while not any(r.raw_path == path for r in emulator.state.received):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_sigterm_lets_in_flight_calls_finish_then_exits_0(
    proxy_process: ProxyProcess, emulator: RunningEmulator
) -> None:
    """SIGTERM during a slow call: the call completes, then the process exits 0."""
    async with aiohttp.ClientSession() as client:
        call = asyncio.create_task(client.get(proxy_process.url("/slow/1")))
        await reached_upstream(emulator, "/slow/1")  # in flight, not merely asked
        proxy_process.process.send_signal(signal.SIGTERM)
        response = await call
        assert response.status == 200
        response.release()
    assert await asyncio.to_thread(proxy_process.process.wait, 20) == 0
    assert '"event":"proxy_stopped"' in proxy_process.output()


async def accepted(client: aiohttp.ClientSession, url: str) -> bool:
    """True if a call to ``url`` got a connection, False if the connection was refused."""
    try:
        async with client.get(url) as response:
            await response.read()
    except aiohttp.ClientConnectorError:
        return False
    return True


async def test_sigterm_refuses_new_connections(
    proxy_process: ProxyProcess, emulator: RunningEmulator
) -> None:
    """Once draining, the listener is closed: new connections are refused."""
    async with aiohttp.ClientSession() as client:
        slow = asyncio.create_task(client.get(proxy_process.url("/slow/3")))
        await reached_upstream(emulator, "/slow/3")
        proxy_process.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):  # a call that came before the listener closed is served
            while await accepted(client, proxy_process.url("/echo/late")):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert not slow.done()  # refused while draining, not after the exit
        (await slow).release()
    assert await asyncio.to_thread(proxy_process.process.wait, 20) == 0


async def test_demo_serves_the_printed_curl_command() -> None:
    """`vipps-proxy demo` prints a curl line that creates a payment through the proxy."""
    async with running_demo() as (demo, _):
        line = await read_until(demo, b"curl ")
        result = await asyncio.to_thread(
            subprocess.run,
            ["bash", "-c", line.decode()],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert re.search(r'"reference"\s*:\s*"demo-[0-9a-f]+"', result.stdout), result.stdout
        assert "redirectUrl" in result.stdout
    assert demo.returncode == 0


async def test_client_disconnect_cancels_the_upstream_call(
    proxy: RunningProxy, emulator: RunningEmulator
) -> None:
    """A client that leaves mid-call: the upstream call is dropped at once and logged."""
    _, writer = await asyncio.open_connection(*proxy.address)
    writer.write(b"GET /slow/30 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    for _ in range(100):
        if any(r.raw_path == "/slow/30" for r in emulator.state.received):
            break
        await asyncio.sleep(0.05)
    writer.close()
    lines: list[dict[str, object]] = []
    for _ in range(100):  # bounded: 5 s, far less than the upstream's 30 s
        lines = proxy.logs.events("request_completed")
        if lines:
            break
        await asyncio.sleep(0.05)
    (line,) = lines
    assert line["error"] == "client_disconnected"
    assert line["status"] == 499
    async with (
        aiohttp.ClientSession() as client,
        client.get(proxy.at("/-/metrics")) as response,
    ):
        # the only call in flight is this metrics scrape itself
        assert "vipps_proxy_in_flight_requests 1.0" in await response.text()


async def test_calls_still_running_at_the_deadline_are_cut_and_logged(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """After shutdown_timeout a still-running call is cut, logged, and the exit is 0."""
    port = free_port()
    config = write_config(
        tmp_path / "p.toml",
        str(emulator.token_url),
        str(emulator.url),
        port,
        shutdown_timeout=0.5,
    )
    process = await asyncio.to_thread(ProxyProcess, config, port, tmp_path / "p.log")
    try:
        async with aiohttp.ClientSession() as client:
            call = asyncio.create_task(client.get(process.url("/slow/30")))
            await reached_upstream(emulator, "/slow/30")
            process.process.send_signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientError):
                await call
        assert await asyncio.to_thread(process.process.wait, 20) == 0
        assert '"error":"cut_at_shutdown"' in process.output()
    finally:
        process.close()


async def test_workers_share_the_port_and_drain_together(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """workers = 2: two processes serve one port, each with its own token; SIGTERM stops both."""
    port = free_port()
    config = write_config(
        tmp_path / "w.toml", str(emulator.token_url), str(emulator.url), port, workers=2
    )
    process = await asyncio.to_thread(ProxyProcess, config, port, tmp_path / "w.log")
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(200):
                if process.output().count('"event":"proxy_started"') == 2:
                    break
                await asyncio.sleep(0.05)
            for i in range(20):
                async with client.get(process.url(f"/echo/{i}")) as response:
                    assert response.status == 200
        assert await asyncio.to_thread(process.terminate) == 0
        started = [line for line in process.output().splitlines() if "proxy_started" in line]
        assert len({re.search(r'"pid":(\d+)', line).group(1) for line in started}) == 2  # type: ignore[union-attr]
        assert process.output().count('"event":"proxy_stopped"') == 2
        assert emulator.state.token_requests["accesstoken"] == 2
    finally:
        process.close()


async def test_workers_drain_and_exit_when_their_parent_is_killed(
    emulator: RunningEmulator, tmp_path: Path
) -> None:
    """workers = 2, the parent killed with SIGKILL (as the OOM killer would): each worker
    drains and exits on its own instead of serving the port on, an orphan, forever."""
    port = free_port()
    config = write_config(
        tmp_path / "w.toml", str(emulator.token_url), str(emulator.url), port, workers=2
    )
    process = await asyncio.to_thread(ProxyProcess, config, port, tmp_path / "w.log")
    try:
        started = '"event":"proxy_started"'
        await eventually(lambda: process.output().count(started) == 2, "both workers", 60)
        lines = [line for line in process.output().splitlines() if started in line]
        pids = {int(re.findall(r'"pid":(\d+)', line)[0]) for line in lines}
        assert len(pids) == 2
        process.process.kill()
        await asyncio.to_thread(process.process.wait)
        await eventually(lambda: not any(running(pid) for pid in pids), "workers gone", 60)
        assert process.output().count('"event":"worker_parent_gone"') == 2
        assert process.output().count('"event":"proxy_stopped"') == 2
    finally:
        process.close()


def running(pid: int) -> bool:
    """The process exists and is not a zombie left for a parent that does not reap."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("delay", [0.3, 0.5, 0.7, 0.9, 1.2])
async def test_sigterm_while_workers_start_stops_every_worker_cleanly(
    emulator: RunningEmulator, tmp_path: Path, delay: float
) -> None:
    """workers = 2, SIGTERM to the parent at some moment of its start: each worker that
    was started starts, then drains at once; none is killed by the signal, and the exit
    is 0. (A SIGTERM before Python has even loaded the proxy ends the parent before any
    worker exists: nothing ran, nothing is written.)"""
    port = free_port()
    config = write_config(
        tmp_path / "w.toml", str(emulator.token_url), str(emulator.url), port, workers=2
    )
    log = tmp_path / "w.log"
    status = await asyncio.to_thread(_terminated_after, config, log, delay)
    output = log.read_text()
    assert "worker_exited" not in output
    assert status == 0 or (status == -signal.SIGTERM and output == ""), (status, output)


def _terminated_after(config: Path, log: Path, delay: float) -> int:
    """Start the proxy, SIGTERM it ``delay`` seconds later; its exit status."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGTERM)
        return process.wait(60)
