"""An open-loop client: calls leave on a fixed schedule whatever the answers do.

``python -m bench.openloop URL --rate R --seconds S --out FILE``. Each call's latency is
counted from the moment the schedule said it should leave, so a stall (a token refresh
that blocked calls, say) shows in every call it delayed: no coordinated omission. The
file holds one ``[wall-clock send time, latency in seconds, status]`` per call, which
is what the token refresh measurement needs and wrk cannot give (its Lua hooks see no
per-call times). Bounded: ``rate * seconds`` calls, each with a 5 s time-out.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Final

import aiohttp
import orjson

from bench.wrk import PATH

CALL_TIMEOUT_S: Final = 5.0
CONNECTIONS: Final = 64

Call = tuple[float, float, int]


async def run(url: str, rate: float, seconds: float) -> list[Call]:
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    clock = time.perf_counter
    wall_offset = time.time() - clock()
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(at: float) -> Call:
            try:
                async with session.get(url) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            return at + wall_offset, clock() - at, status

        start = clock() + 0.2
        tasks = []
        for i in range(int(rate * seconds)):
            at = start + i / rate
            pause = at - clock()
            if pause > 0:
                await asyncio.sleep(pause)
            tasks.append(asyncio.create_task(one(at)))
        return list(await asyncio.gather(*tasks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        calls = uvloop.run(run(args.base + PATH, args.rate, args.seconds))
    except ImportError:  # pragma: no cover - Windows
        calls = asyncio.run(run(args.base + PATH, args.rate, args.seconds))
    args.out.write_bytes(orjson.dumps(calls))


if __name__ == "__main__":
    main()
