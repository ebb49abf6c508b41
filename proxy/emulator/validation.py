"""Checking ePayment request bodies against the shapes in epayment.v1.yml.

Each checker notes what is wrong as ``{"name", "reason"}`` items, the
``extraDetails`` of the 400 problem, instead of stopping at the first error.
"""

import re
from dataclasses import dataclass, field

from .payments import Money

CURRENCIES = frozenset({"NOK", "DKK", "EUR"})
PAYMENT_METHODS = frozenset({"WALLET", "CARD"})
USER_FLOWS = frozenset({"PUSH_MESSAGE", "NATIVE_REDIRECT", "WEB_REDIRECT", "QR"})
# tests/specs/epayment.local.yml (1.4.1) says 8-50 characters; the Webhooks API's event
# types page gives ReferenceType as ^[a-zA-Z0-9-]{8,64}$
# (https://developer.vippsmobilepay.com/docs/APIs/webhooks-api/events/), so do we.
REFERENCE = re.compile(r"[a-zA-Z0-9-]{8,64}")
MAX_AMOUNT = 65_000_000  # minor units: Amount.value's maximum in tests/specs/epayment.local.yml


@dataclass
class Findings:
    """What is wrong with a request body, field by field."""

    items: list[dict[str, str]] = field(default_factory=list)

    def add(self, name: str, reason: str) -> None:
        """Note that field ``name`` is wrong, and why."""
        self.items.append({"name": name, "reason": reason})


@dataclass(frozen=True)
class CreatePayment:
    """The parts of a valid ``CreatePaymentRequest`` the emulator keeps."""

    amount: Money
    payment_method: str
    reference: str
    user_flow: str
    metadata: dict[str, str] | None


def check_create(body: object, findings: Findings) -> CreatePayment | None:
    """A valid create request, or None with ``findings`` saying what is wrong."""
    if not isinstance(body, dict):
        findings.add("body", "must be a JSON object")
        return None
    amount = check_amount(body.get("amount"), "amount", findings)
    method = check_payment_method(body.get("paymentMethod"), findings)
    reference = check_reference(body.get("reference"), findings)
    user_flow = check_user_flow(body, findings)
    metadata = check_metadata(body.get("metadata"), findings)
    if amount is None or method is None or reference is None or user_flow is None:
        return None
    if findings.items:  # something in the flow's extra fields or the metadata
        return None
    return CreatePayment(amount, method, reference, user_flow, metadata)


def check_amount(value: object, name: str, findings: Findings) -> Money | None:
    """An ``Amount``: ``{"currency": NOK|DKK|EUR, "value": integer 0..65000000}``."""
    if not isinstance(value, dict):
        findings.add(name, "is required and must be an object with currency and value")
        return None
    currency, minor = value.get("currency"), value.get("value")
    if currency not in CURRENCIES:
        findings.add(f"{name}.currency", f"must be one of {sorted(CURRENCIES)}")
    if not isinstance(minor, int) or isinstance(minor, bool) or not 0 <= minor <= MAX_AMOUNT:
        findings.add(f"{name}.value", f"must be an integer from 0 to {MAX_AMOUNT} (minor units)")
        return None
    return Money(currency, minor) if isinstance(currency, str) and currency in CURRENCIES else None


def check_payment_method(value: object, findings: Findings) -> str | None:
    """A ``PaymentMethod``: ``{"type": WALLET|CARD}``."""
    kind = value.get("type") if isinstance(value, dict) else None
    if not isinstance(kind, str) or kind not in PAYMENT_METHODS:
        findings.add("paymentMethod.type", f"is required, one of {sorted(PAYMENT_METHODS)}")
        return None
    return kind


def check_reference(value: object, findings: Findings) -> str | None:
    """A ``Reference``: 8 to 64 of ``[a-zA-Z0-9-]``."""
    if not isinstance(value, str) or REFERENCE.fullmatch(value) is None:
        findings.add("reference", "is required: 8 to 64 characters of a-z, A-Z, 0-9 and '-'")
        return None
    return value


def check_user_flow(body: dict[str, object], findings: Findings) -> str | None:
    """``userFlow``, and the fields its flow needs (``returnUrl``, ``customer``)."""
    flow = body.get("userFlow")
    if not isinstance(flow, str) or flow not in USER_FLOWS:
        findings.add("userFlow", f"is required, one of {sorted(USER_FLOWS)}")
        return None
    if flow == "WEB_REDIRECT" and not isinstance(body.get("returnUrl"), str):
        findings.add("returnUrl", "is required when userFlow is WEB_REDIRECT")
    if flow == "PUSH_MESSAGE" and not isinstance(body.get("customer"), dict):
        findings.add("customer", "is required when userFlow is PUSH_MESSAGE")
    return flow


def check_metadata(value: object, findings: Findings) -> dict[str, str] | None:
    """``metadata``: at most 5 string pairs."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 5:
        findings.add("metadata", "must be an object of at most 5 string values")
        return None
    if not all(isinstance(v, str) for v in value.values()):
        findings.add("metadata", "values must be strings")
        return None
    return {str(k): str(v) for k, v in value.items()}


def check_modification(body: object, findings: Findings) -> Money | None:
    """A capture or refund body: ``{"modificationAmount": Amount}``."""
    if not isinstance(body, dict):
        findings.add("body", "must be a JSON object with modificationAmount")
        return None
    return check_amount(body.get("modificationAmount"), "modificationAmount", findings)
