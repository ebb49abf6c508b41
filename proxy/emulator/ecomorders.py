"""The eCom v2 domain: an order, its transaction log, and the legal operations on it.

Pure data and rules, no HTTP, as the eCom API guide documents them: an order is
initiated (``INITIATE``), reserved when the user approves (``RESERVE``), captured in
full or in parts (``CAPTURE``), refunded up to what was captured (``REFUND``), and
cancelled only before any capture (``CANCEL`` while initiated, ``VOID`` once reserved),
unless ``shouldReleaseRemainingFunds`` releases what a partial capture left.
``X-Request-Id`` makes capture and refund idempotent: the same id with the same
request is answered again without a change; with another request it is an error.
A broken rule raises `EcomError` with the guide's error group, code and message.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Literal

from .payments import utc_timestamp

LogOperation = Literal["INITIATE", "RESERVE", "CAPTURE", "REFUND", "CANCEL", "VOID"]
OrderStatus = Literal["INITIATE", "RESERVE", "CANCELLED"]
Adjustment = Literal["capture", "refund"]
MIN_AMOUNT = 100  # øre: "Minimum 1 NOK" (the eCom spec, every amount)


class EcomError(Exception):
    """An eCom error answer: HTTP ``status`` and one ``Error`` object."""

    def __init__(self, status: int, group: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.group, self.code, self.message = status, group, code, message


def not_allowed() -> EcomError:
    return EcomError(400, "VippsError", "91", "The transaction is not allowed.")


def transaction_id() -> str:
    """A transaction id as Vipps gives them: ten digits or more (spec: ``^\\d{10,}$``)."""
    return str(10**9 + secrets.randbelow(9 * 10**9))


@dataclass(frozen=True)
class LogEntry:
    """One entry of an order's ``transactionLogHistory``."""

    operation: LogOperation
    amount: int
    transaction_text: str
    request_id: str = ""
    transaction_id: str = field(default_factory=transaction_id)
    timestamp: str = field(default_factory=utc_timestamp)

    def as_json(self) -> dict[str, object]:
        return {
            "amount": self.amount,
            "transactionText": self.transaction_text,
            "transactionId": self.transaction_id,
            "timeStamp": self.timestamp,
            "operation": self.operation,
            "requestId": self.request_id,
            "operationSuccess": True,
        }


@dataclass
class EcomOrder:
    """One eCom order of the sales unit ``merchant_serial_number``."""

    order_id: str
    merchant_serial_number: str
    amount: int
    transaction_text: str
    express: bool = False
    callback_prefix: str = ""
    auth_token: str = field(default="", repr=False)
    status: OrderStatus = "INITIATE"
    captured: int = 0
    refunded: int = 0
    released: bool = False  # what a partial capture left was released by a cancel
    log: list[LogEntry] = field(default_factory=list)
    done: dict[tuple[Adjustment, str], tuple[int, dict[str, object]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log.append(LogEntry("INITIATE", self.amount, self.transaction_text))

    def approve(self) -> None:
        """The user approved the payment in the app: the amount is reserved."""
        if self.status != "INITIATE":
            raise EcomError(400, "VippsError", "92", "The transaction has already been processed.")
        self.status = "RESERVE"
        self.log.append(LogEntry("RESERVE", self.amount, self.transaction_text))

    def capture(self, amount: int, text: str, request_id: str) -> dict[str, object]:
        """Capture ``amount`` (0: all that is left); the ``TransactionResponse``."""
        if (replay := self._replayed("capture", amount, request_id)) is not None:
            return replay
        if self.status == "INITIATE":
            raise EcomError(
                400,
                "Payment",
                "62",
                "The amount you tried to capture is not reserved. The user must accept "
                "the payment before capture can be done.",
            )
        if self.status != "RESERVE" or self.released:
            raise not_allowed()
        value = amount or self.remaining_to_capture()
        if not 0 < value <= self.remaining_to_capture():
            raise EcomError(
                400,
                "Payment",
                "61",
                "The total capture amount exceeds the reserved amount. You cannot capture "
                "a higher amount than the user has accepted. Check the payment details",
            )
        self.captured += value
        entry = self._logged("CAPTURE", value, text, request_id)
        answer = self._answer("transactionInfo", entry, "Captured")
        self.done["capture", request_id] = (amount, answer)
        return answer

    def refund(self, amount: int, text: str, request_id: str) -> dict[str, object]:
        """Refund ``amount`` (0: all that is captured and not refunded); the
        ``RefundTransactionResponse``."""
        if (replay := self._replayed("refund", amount, request_id)) is not None:
            return replay
        if self.captured == 0:
            if self.status == "CANCELLED":
                raise EcomError(400, "Payment", "73", "Cannot refund a canceled order.")
            raise EcomError(
                400,
                "Payment",
                "72",
                "Cannot refund a reserved order. The orderId can be canceled instead.",
            )
        value = amount or self.captured - self.refunded
        if not 0 < value <= self.captured - self.refunded:
            raise EcomError(
                400, "Payment", "71", "Cannot refund a higher amount than the captured amount."
            )
        self.refunded += value
        entry = self._logged("REFUND", value, text, request_id)
        answer = self._answer("transaction", entry, "Refund")
        self.done["refund", request_id] = (amount, answer)
        return answer

    def cancel(self, text: str, release_remaining: bool) -> dict[str, object]:
        """Cancel before any capture (or release what a partial capture left, when
        asked); the ``CancelTransactionResponse``."""
        if self.status == "CANCELLED" or self.released:
            raise EcomError(400, "VippsError", "92", "The transaction has already been processed.")
        if self.captured and not release_remaining:
            raise EcomError(
                400, "Payment", "51", "Cannot cancel an orderId that has already been captured."
            )
        if self.captured:
            self.released = True
            entry = self._logged("VOID", self.amount - self.captured, text, "")
        else:
            operation: LogOperation = "CANCEL" if self.status == "INITIATE" else "VOID"
            self.status = "CANCELLED"
            entry = self._logged(operation, self.amount, text, "")
        return self._answer("transactionInfo", entry, "Cancelled", amount=self.amount)

    def remaining_to_capture(self) -> int:
        if self.status != "RESERVE" or self.released:
            return 0
        return self.amount - self.captured

    def summary_json(self) -> dict[str, object]:
        """The ``TransactionSummary``."""
        return {
            "capturedAmount": self.captured,
            "remainingAmountToCapture": self.remaining_to_capture(),
            "refundedAmount": self.refunded,
            "remainingAmountToRefund": self.captured - self.refunded,
        }

    def details_json(self) -> dict[str, object]:
        """The ``TransactionDetails``: the log newest first; no summary before the user
        has acted (the guide: "will not be part of the response if the user does not
        react")."""
        body: dict[str, object] = {
            "orderId": self.order_id,
            "transactionLogHistory": [entry.as_json() for entry in reversed(self.log)],
        }
        if len(self.log) > 1:
            body["transactionSummary"] = self.summary_json()
        return body

    def _replayed(self, kind: Adjustment, amount: int, request_id: str) -> dict[str, object] | None:
        earlier = self.done.get((kind, request_id)) if request_id else None
        if earlier is None:
            return None
        if earlier[0] != amount:
            raise EcomError(
                400,
                "VippsError",
                "93",
                f"The {kind} request must be identical to the previous request(s) in an "
                "idempotent retry.",
            )
        return earlier[1]

    def _logged(self, operation: LogOperation, amount: int, text: str, request_id: str) -> LogEntry:
        entry = LogEntry(operation, amount, text, request_id)
        self.log.append(entry)
        return entry

    def _answer(
        self, key: str, entry: LogEntry, status: str, *, amount: int | None = None
    ) -> dict[str, object]:
        return {
            "orderId": self.order_id,
            key: {
                "amount": entry.amount if amount is None else amount,
                "status": status,
                "timeStamp": entry.timestamp,
                "transactionId": entry.transaction_id,
                "transactionText": entry.transaction_text,
            },
            "transactionSummary": self.summary_json(),
        }


@dataclass
class EcomOrders:
    """eCom orders by (MSN, orderId), the callbacks sent (status per orderId, 0 when it
    failed), and the callbacks and approvals in flight."""

    orders: dict[tuple[str, str], EcomOrder] = field(default_factory=dict)
    callbacks: dict[str, int] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
