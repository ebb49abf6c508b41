"""``CallRecord``: what one call's log line and metrics report, filled in as it goes.

Its own module so that everything that handles a call (``proxy.forwarding``,
``proxy.webhooks``, ``proxy.tracing``) can name it without importing the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded only when [tracing] is on
    from proxy.tracing import CallTrace


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
