"""What one emulator remembers: tokens, payments, sessions, requests, counters, faults.

Tests reach it with ``emulator_state(app)`` and assert on it directly ("the upstream
saw no request", "exactly one token request", "this header arrived").
"""

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from .ecomorders import EcomOrders
from .faults import Faults
from .payments import Payment
from .settings import EmulatorSettings, SalesUnit

TokenStyle = Literal["accesstoken", "jwt-token", "oauth2"]

# Header values shown as MASK wherever requests are displayed (repr, admin app).
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "ocp-apim-subscription-key", "client_secret", "cookie"}
)
MASK = "<masked>"


def masked(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` with the values of secret ones replaced by MASK."""
    return [(name, MASK if name.lower() in SECRET_HEADERS else value) for name, value in headers]


@dataclass(frozen=True)
class IssuedToken:
    """A token handed out to ``unit``; valid until ``expires_at`` (time.monotonic)."""

    unit: SalesUnit
    expires_at: float


@dataclass(repr=False)
class ReceivedRequest:
    """One API (non-token) request as it arrived.

    ``headers`` keeps wire order and repeats. ``body_length`` counts the body bytes
    received; it is final once the emulator has answered. ``repr`` masks secrets.
    """

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body_length: int = 0

    def values(self, name: str) -> list[str]:
        """Every value of header ``name`` (any case), in arrival order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def __repr__(self) -> str:
        return (
            f"ReceivedRequest(method={self.method!r}, raw_path={self.raw_path!r}, "
            f"headers={masked(self.headers)!r}, body_length={self.body_length!r})"
        )


@dataclass(frozen=True)
class CheckoutSession:
    """A Checkout v3 session."""

    reference: str
    merchant_serial_number: str
    session_id: str
    amount: dict[str, object]


def _no_token_requests() -> dict[TokenStyle, int]:
    return {"accesstoken": 0, "jwt-token": 0, "oauth2": 0}


@dataclass
class EmulatorState:
    """The mutable state of one emulator application."""

    settings: EmulatorSettings
    tokens: dict[str, IssuedToken] = field(default_factory=dict, repr=False)
    # Requests received per token endpoint style, answered or not (faults included).
    token_requests: dict[TokenStyle, int] = field(default_factory=_no_token_requests)
    received: deque[ReceivedRequest] = field(init=False, repr=False)
    received_total: int = 0
    payments: dict[str, Payment] = field(default_factory=dict, repr=False)
    checkout_sessions: dict[str, CheckoutSession] = field(default_factory=dict, repr=False)
    ecom: EcomOrders = field(default_factory=EcomOrders, repr=False)
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        self.received = deque(maxlen=self.settings.received_limit)

    def issue_token(self, unit: SalesUnit, lifetime: float) -> str:
        """A new opaque, unguessable token for ``unit`` that stops working after ``lifetime``."""
        now = time.monotonic()
        self.tokens = {t: issued for t, issued in self.tokens.items() if issued.expires_at > now}
        token = "eyJ" + secrets.token_urlsafe(48)
        self.tokens[token] = IssuedToken(unit, now + lifetime)
        return token

    def token_owner(self, token: str) -> SalesUnit | None:
        """The unit ``token`` was issued to, or None when unknown or expired."""
        issued = self.tokens.get(token)
        if issued is None or issued.expires_at <= time.monotonic():
            return None
        return issued.unit

    def record(self, request: ReceivedRequest) -> None:
        """Remember an API request (the oldest drop out past ``received_limit``)."""
        self.received.append(request)
        self.received_total += 1
