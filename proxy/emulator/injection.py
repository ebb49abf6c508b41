"""Acting faults out on the wire: dropped connections, stalls, broken bodies.

`with_api_faults` wraps the handlers of the fault-prone API routes. Body faults
("stall_body", "reset_mid_body") let the handler do its work first, so a payment is
really created even when its answer is lost, as happens in production. A streaming
handler writes through `write_chunks`, which acts the body fault out after the first
chunk; any other answer is sent in two halves with the fault in between.
"""

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog
from aiohttp import web

from .answers import Rejection, problem
from .faults import Faults
from .keys import BODY_FAULT_KEY, FAULTED_KEY, request_state

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAULT_INJECTED = "emulator_fault_injected"
RETRY_AFTER = {"Retry-After": "1"}

logger = structlog.get_logger(__name__)


def drop_connection(request: web.Request, *, abort: bool) -> web.StreamResponse:
    """Close (or abort) the connection unanswered.

    The returned response is never sent: aiohttp finds the transport closed and
    finishes the request quietly.
    """
    transport = request.transport
    if transport is not None:
        if abort:
            transport.abort()
        else:
            transport.close()
    return web.Response()


def with_api_faults(handler: Handler) -> Handler:
    """``handler``, with the API faults switched on in the state acted out around it."""

    async def faulted(request: web.Request) -> web.StreamResponse:
        faults = request_state(request).faults.take_api()
        if faults is None:
            return await handler(request)
        request[FAULTED_KEY] = True
        logger.info(FAULT_INJECTED, fault=faults.api, path=request.path)
        match faults.api:
            case "reset":
                return drop_connection(request, abort=True)
            case "error500":
                return problem(request, 500, "Internal Server Error", "An emulated fault.")
            case "error503":
                detail = "Temporarily unavailable (an emulated fault)."
                return problem(request, 503, "Service Unavailable", detail, headers=RETRY_AFTER)
            case "stall_headers":
                await asyncio.sleep(faults.api_delay)
                return await handler(request)
            case _:
                return await _break_body(request, handler, faults)

    return faulted


async def _break_body(request: web.Request, handler: Handler, faults: Faults) -> web.StreamResponse:
    request[BODY_FAULT_KEY] = faults
    try:
        response = await handler(request)
    except Rejection as rejection:
        response = rejection.response
    if response.prepared or BODY_FAULT_KEY not in request:
        return response  # a streaming handler acted the fault out itself
    body = response.body if isinstance(response, web.Response) else None
    data = body if isinstance(body, bytes) else b""
    stream = web.StreamResponse(status=response.status, headers=response.headers)
    stream.content_length = len(data)
    await stream.prepare(request)
    half = (len(data) + 1) // 2
    return await write_chunks(request, stream, (data[:half], data[half:]))


async def write_chunks(
    request: web.Request, response: web.StreamResponse, chunks: Iterable[bytes]
) -> web.StreamResponse:
    """Write ``chunks`` to a prepared ``response``, breaking it if a body fault is set.

    A client that goes away ends the writing quietly.
    """
    faults = request.pop(BODY_FAULT_KEY, None)
    try:
        for chunk in chunks:
            await response.write(chunk)
            if faults is not None:
                if faults.api == "reset_mid_body":
                    drop_connection(request, abort=True)
                    return response
                await asyncio.sleep(faults.api_delay)
                faults = None
    except ConnectionError:
        pass
    return response
