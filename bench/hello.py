"""The floor: a bare aiohttp server answering the upstream's JSON, on uvloop like the proxy.

``python -m bench.hello --port N``. A POST's body is read before the answer, as any
server that looks at it would. No logging, no metrics: what aiohttp itself costs.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from aiohttp import web

from bench.nginx import SMALL_JSON

BODY = SMALL_JSON.encode()


async def hello(request: web.Request) -> web.Response:
    if request.body_exists:
        await request.read()
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        pass
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
        loop=factory(),
    )


if __name__ == "__main__":
    main()
