"""The ePayment domain: a payment, its amounts, its events and legal transitions.

Pure data and rules, no HTTP. Rule breaks raise `PaymentConflict` (the payment's state
forbids the operation: 409) or `InvalidAdjustment` (the amount is wrong: 400).
Adjustments are idempotent per ``Idempotency-Key``: the same key with the same
operation and amount is a no-op; with another operation or amount it is a conflict.
"""

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

PaymentState = Literal["CREATED", "ABORTED", "EXPIRED", "AUTHORIZED", "TERMINATED"]
EventName = Literal[
    "CREATED", "ABORTED", "EXPIRED", "CANCELLED", "CAPTURED", "REFUNDED", "AUTHORIZED", "TERMINATED"
]
Operation = Literal["capture", "cancel", "refund"]


class PaymentConflict(Exception):
    """The payment's state (or an idempotency key) forbids the operation."""


class InvalidAdjustment(Exception):
    """The requested amount does not fit the payment."""


@dataclass(frozen=True)
class Money:
    """An amount in minor units (øre, cents)."""

    currency: str
    value: int

    def as_json(self) -> dict[str, object]:
        """The ePayment ``Amount`` object."""
        return {"currency": self.currency, "value": self.value}


def utc_timestamp() -> str:
    """Now, as RFC 3339 in UTC with a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PaymentEvent:
    """One entry of a payment's event log."""

    name: EventName
    amount: Money
    idempotency_key: str | None
    timestamp: str = field(default_factory=utc_timestamp)
    success: bool = True
    # "Each payment operation (i.e., create, capture, refund, cancel) will have a unique
    # pspReference" (https://developer.vippsmobilepay.com/docs/APIs/webhooks-api/events/).
    psp_reference: str = field(default_factory=lambda: str(secrets.randbelow(10**10)))


@dataclass
class Payment:
    """One payment, created for the sales unit with ``merchant_serial_number``."""

    reference: str
    merchant_serial_number: str
    amount: Money
    payment_method: str
    user_flow: str
    idempotency_key: str
    redirect_url: str | None = None
    metadata: dict[str, str] | None = None
    state: PaymentState = "CREATED"
    authorized: int = 0
    captured: int = 0
    cancelled: int = 0
    refunded: int = 0
    psp_reference: str = field(default_factory=lambda: str(secrets.randbelow(10**10)))
    events: list[PaymentEvent] = field(default_factory=list)
    adjustments: dict[str, tuple[Operation, int]] = field(default_factory=dict)
    created_at: float = field(default_factory=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        # The payment's own pspReference is its creation's (the same page: "Get payment
        # response contains the pspReference for the payment creation event").
        created = Money(self.amount.currency, self.amount.value)
        self.events.append(
            PaymentEvent("CREATED", created, self.idempotency_key, psp_reference=self.psp_reference)
        )

    def age(self) -> float:
        """Seconds since the payment was created."""
        return time.monotonic() - self.created_at

    def authorize(self) -> None:
        """The user approved the payment in the app."""
        if self.state != "CREATED":
            raise PaymentConflict(f"A payment in state {self.state} cannot be approved")
        self.state = "AUTHORIZED"
        self.authorized = self.amount.value
        self._log("AUTHORIZED", self.amount.value, None)

    def capture(self, amount: Money, key: str) -> None:
        """Capture ``amount`` of what is authorized and not yet captured or cancelled."""
        if self._replayed("capture", amount, key):
            return
        self._require_authorized("captured")
        self._require_within(amount, self.amount.value - self.captured - self.cancelled, "capture")
        self.captured += amount.value
        self._settle("capture", "CAPTURED", amount.value, key)

    def refund(self, amount: Money, key: str) -> None:
        """Refund ``amount`` of what is captured and not yet refunded."""
        if self._replayed("refund", amount, key):
            return
        self._require_authorized("refunded")
        self._require_within(amount, self.captured - self.refunded, "refund")
        self.refunded += amount.value
        self._settle("refund", "REFUNDED", amount.value, key)

    def cancel(self, key: str) -> None:
        """Cancel what is left; a payment with nothing captured becomes TERMINATED."""
        if self._replayed("cancel", Money(self.amount.currency, 0), key):
            return
        if self.state == "CREATED":
            self.state = "TERMINATED"
            self._settle("cancel", "TERMINATED", 0, key)
            return
        self._require_authorized("cancelled")
        remaining = self.amount.value - self.captured - self.cancelled
        if remaining == 0:
            raise PaymentConflict("Nothing is left to cancel")
        self.cancelled += remaining
        if self.captured == 0:
            self.state = "TERMINATED"
        self._settle("cancel", "CANCELLED", remaining, key)

    def aggregate_json(self) -> dict[str, object]:
        """The ePayment ``Aggregate`` object."""
        currency = self.amount.currency
        return {
            "authorizedAmount": Money(currency, self.authorized).as_json(),
            "cancelledAmount": Money(currency, self.cancelled).as_json(),
            "capturedAmount": Money(currency, self.captured).as_json(),
            "refundedAmount": Money(currency, self.refunded).as_json(),
        }

    def modification_json(self) -> dict[str, object]:
        """The ePayment ``ModificationResponse``."""
        return {
            "amount": self.amount.as_json(),
            "state": self.state,
            "aggregate": self.aggregate_json(),
            "pspReference": self.psp_reference,
            "reference": self.reference,
        }

    def as_json(self) -> dict[str, object]:
        """The ePayment ``GetPaymentResponse``."""
        body = self.modification_json()
        body["paymentMethod"] = {"type": self.payment_method}
        body["profile"] = {}
        if self.redirect_url is not None:
            body["redirectUrl"] = self.redirect_url
        if self.metadata is not None:
            body["metadata"] = self.metadata
        return body

    def events_json(self) -> list[dict[str, object]]:
        """The ePayment event log: a list of ``PaymentEvent``."""
        return [
            {
                "reference": self.reference,
                "pspReference": event.psp_reference,
                "name": event.name,
                "amount": event.amount.as_json(),
                "timestamp": event.timestamp,
                "idempotencyKey": event.idempotency_key,
                "success": event.success,
            }
            for event in self.events
        ]

    def _replayed(self, operation: Operation, amount: Money, key: str) -> bool:
        earlier = self.adjustments.get(key)
        if earlier is None:
            return False
        if earlier != (operation, amount.value):
            raise PaymentConflict("The Idempotency-Key was already used for another request")
        return True

    def _require_authorized(self, verb: str) -> None:
        if self.state != "AUTHORIZED":
            raise PaymentConflict(f"A payment in state {self.state} cannot be {verb}")

    def _require_within(self, amount: Money, limit: int, operation: str) -> None:
        if amount.currency != self.amount.currency:
            raise InvalidAdjustment(f"The {operation} currency must be {self.amount.currency}")
        if not 0 < amount.value <= limit:
            raise InvalidAdjustment(f"The {operation} amount must be between 1 and {limit}")

    def _settle(self, operation: Operation, event: EventName, value: int, key: str) -> None:
        self.adjustments[key] = (operation, 0 if operation == "cancel" else value)
        self._log(event, value, key)

    def _log(self, name: EventName, value: int, key: str | None) -> None:
        self.events.append(PaymentEvent(name, Money(self.amount.currency, value), key))
