"""``CallRecord``: what one call's log line and metrics report, filled in as it goes;
and the call's id (``request_id``: the client's ``X-Request-Id`` or a new one).

Its own module so that everything that handles a call (``proxy.forwarding``,
``proxy.webhooks``, ``proxy.tracing``) can name it without importing the others.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy.headers import REQUEST_ID

if TYPE_CHECKING:  # loaded only when [tracing] is on
    from proxy.tracing import CallTrace

MAX_REQUEST_ID: Final = 128


@dataclass
class CallRecord:
    """What the call's log line and metrics report; filled in as the call goes."""

    request_id: str
    method: str
    path: str
    client: str
    route: str = ""
    upstream: str = ""
    status: int = 0
    token: str = "none"
    bytes_in: int = 0
    bytes_out: int = 0
    error: str = ""
    replayed: bool = False
    retried_stale_connection: bool = False
    credentials: str = ""
    trace: CallTrace | None = None  # tracing on: the call's spans (proxy.tracing)


def request_id(headers: Mapping[str, str]) -> str:
    """The client's X-Request-Id if it is sane, else a new one (an id, not a secret)."""
    given = headers.get(REQUEST_ID, "")
    if 0 < len(given) <= MAX_REQUEST_ID and given.isprintable() and given.isascii():
        return given
    return new_request_id()


def new_request_id() -> str:
    return f"{random.getrandbits(128):032x}"
