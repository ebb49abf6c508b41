"""Diagnostic endpoints for testing a proxy: echo, download, status, slow.

- ``ANY /echo/...``: describes the request exactly as it arrived (raw path and query,
  headers in order with repeats, body length and SHA-256), reading the body in chunks.
- ``GET /download/{n}``: streams n bytes of a fixed pattern (byte i is ``i % 256``) in
  64 KiB chunks with Content-Length, or chunked with ``?chunked=1``; sets two
  ``Set-Cookie`` and two ``X-Echo-Multi`` headers.
- ``GET /status/{code}``: answers with that status (204 and 304 without a body).
- ``GET /slow/{seconds}``: answers after sleeping.
"""

import asyncio
import hashlib
from collections.abc import Iterator

from aiohttp import web

from .answers import Rejection, problem
from .injection import write_chunks

CHUNK = 64 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)
MAX_DOWNLOAD = 1 << 40
MAX_SLEEP = 600.0
NO_BODY = frozenset({204, 304})
REDIRECTS = frozenset({301, 302, 303, 307, 308})


async def echo(request: web.Request) -> web.StreamResponse:
    """Any method on ``/echo/...``: the request, described as JSON."""
    digest = hashlib.sha256()
    length = 0
    try:
        async for chunk in request.content.iter_chunked(CHUNK):
            digest.update(chunk)
            length += len(chunk)
    except ConnectionError:
        return web.Response()  # the client left; nobody to answer
    return web.json_response(
        {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [list(pair) for pair in raw_headers(request)],
            "body_length": length,
            "body_sha256": digest.hexdigest(),
        }
    )


def raw_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    """The request's headers in wire order with repeats, decoded as aiohttp does."""
    return [
        (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for name, value in request.raw_headers
    ]


async def download(request: web.Request) -> web.StreamResponse:
    """``GET /download/{n}[?chunked=1]``: n pattern bytes, streamed."""
    size = int(request.match_info["n"])
    if size > MAX_DOWNLOAD:
        raise Rejection(problem(request, 400, "Bad Request", f"At most {MAX_DOWNLOAD} bytes."))
    response = web.StreamResponse()
    response.content_type = "application/octet-stream"
    for name, value in (
        ("Set-Cookie", "emulator_a=1; Path=/"),
        ("Set-Cookie", "emulator_b=2; Path=/; HttpOnly"),
        ("X-Echo-Multi", "first"),
        ("X-Echo-Multi", "second"),
    ):
        response.headers.add(name, value)
    if request.query.get("chunked") == "1":
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)
    return await write_chunks(request, response, pattern(size))


def pattern(size: int) -> Iterator[bytes]:
    """``size`` bytes where byte i is ``i % 256``, in chunks of 64 KiB."""
    full, rest = divmod(size, CHUNK)
    for _ in range(full):
        yield PATTERN
    if rest:
        yield PATTERN[:rest]


async def status(request: web.Request) -> web.StreamResponse:
    """``GET /status/{code}``: an answer with that status; redirects point at /echo/."""
    code = int(request.match_info["code"])
    if not 200 <= code <= 599:
        raise Rejection(problem(request, 400, "Bad Request", "The status must be 200 to 599."))
    headers = {"Location": "/echo/redirected"} if code in REDIRECTS else None
    if code in NO_BODY:
        return web.Response(status=code, headers=headers)
    return web.json_response({"status": code}, status=code, headers=headers)


async def slow(request: web.Request) -> web.StreamResponse:
    """``GET /slow/{seconds}``: answers 200 after sleeping that long."""
    seconds = float(request.match_info["seconds"])
    if seconds > MAX_SLEEP:
        raise Rejection(problem(request, 400, "Bad Request", f"At most {MAX_SLEEP} seconds."))
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds})
