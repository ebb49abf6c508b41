"""1 GiB up and 1 GiB down with curl, while the proxy's resident memory is sampled.

The bodies are a sparse file of zeros (no disk, no RAM): nginx sends it with sendfile,
curl uploads it with ``PUT``. The upstream writes uploads to the work folder (tmpfs
where there is one); each is deleted after its transfer. Rates are MB/s (10^6 bytes)
over curl's total time; peak RSS is the kernel's VmHWM of the proxy's processes,
reset just before the transfer, and RSS is also sampled every 100 ms to show it stays
flat.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import procs
from bench.machine import CpuSplit
from bench.servers import Server
from bench.tools import Tools

SAMPLE_S: Final = 0.1
DOWNLOAD_PATH: Final = "/files/big.bin"
UPLOAD_PATH: Final = "/upload/big.bin"


class StreamError(Exception):
    """A transfer failed or moved the wrong number of bytes."""


def make_body(www: Path, size: int) -> Path:
    """The sparse file the upstream serves and curl uploads."""
    path = www / "files" / "big.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        out.truncate(size)
    (www / "upload").mkdir(exist_ok=True)
    return path


@dataclass(frozen=True)
class Streamer:
    tools: Tools
    split: CpuSplit
    body: Path
    www: Path

    def transfer(self, proxy: Server, direction: str) -> dict[str, Any]:
        size = self.body.stat().st_size
        argv = [
            *self.split.prefix(self.split.load, self.tools.taskset),
            self.tools.curl,
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code} %{size_download} %{size_upload} %{time_total}",
        ]
        if direction == "up":
            argv += ["--upload-file", str(self.body), "-H", "Expect:", proxy.url + UPLOAD_PATH]
        else:
            argv += [proxy.url + DOWNLOAD_PATH]
        pids = proxy.pids()
        cpu_before = procs.cpu_seconds(pids)
        reset = procs.reset_peak(pids)
        start_rss = procs.rss_mib(pids)
        samples = []
        curl = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + max(60.0, size / 50e6)  # at least 50 MB/s, or fail
        while curl.poll() is None:
            if time.monotonic() > deadline:
                curl.kill()
                raise StreamError(f"{direction} through {proxy.name} took too long")
            samples.append(procs.rss_mib(pids))
            time.sleep(SAMPLE_S)
        out, err = curl.communicate()
        cpu = procs.cpu_seconds(pids) - cpu_before
        peak = procs.rss_mib(pids, "VmHWM") if reset else max(samples, default=start_rss)
        (self.www / "upload" / "big.bin").unlink(missing_ok=True)
        status, down, up, seconds = out.split()
        moved = int(float(up if direction == "up" else down))
        if curl.returncode != 0 or status[0] != "2" or moved != size:
            raise StreamError(f"{direction} via {proxy.name}: {status} {moved}B {err.strip()}")
        return {
            "bytes": moved,
            "seconds": round(float(seconds), 3),
            "mb_per_s": round(moved / float(seconds) / 1e6, 1),
            # CPU the proxy spent per GB moved: steadier than the rate on a busy machine.
            "cpu_s_per_gb": round(cpu / (moved / 1e9), 3),
            "peak_rss_mib": round(peak, 1),
            "rss_start_mib": round(start_rss, 1),
            "rss_sampled_max_mib": round(max(samples, default=start_rss), 1),
            "peak_from": "VmHWM" if reset else "samples",
        }
