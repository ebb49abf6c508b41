"""A Vipps MobilePay emulator, for offline development, the demo and the tests.

It answers the token endpoints, ePayment v1, eCom v2, Checkout v3 sessions and Login in
the real shapes, plus diagnostic endpoints (echo, download, status, slow) for testing a proxy;
faults (outages, stalls, broken bodies) can be switched on per test or over the admin
app, which listens on a port of its own. The modules, one concept each:

- ``settings``: `SalesUnit`, `EmulatorSettings`, the demo credentials
- ``faults``: the `Faults` switches and their self-clearing count
- ``payments``: the ePayment domain, a payment and its legal transitions
- ``state``: `EmulatorState`, everything one emulator remembers
- ``keys``: the typed app/request keys and `emulator_state`
- ``answers``: problem and gateway error answers, `Rejection`
- ``credentials``: recognising sales units; the API authentication rule
- ``injection``: acting faults out on the wire
- ``tokens``: the three token endpoints
- ``validation``: checking ePayment request bodies
- ``epayment``, ``checkout``, ``login``: the APIs
- ``echo``: echo, download, status, slow
- ``webhooks``: the Webhooks API, and signed ePayment events sent on every change
- ``ecomorders``: the eCom v2 domain, an order, its transaction log and legal operations
- ``ecom``: eCom v2 over HTTP, the approvals, and the one-shot callback to ``callbackPrefix``
- ``admin``: `create_admin_app`, fault switches and introspection
- ``app``: `create_emulator`, routes and middlewares
- ``serve``: `serve_emulator`, both apps on real ports
- ``speccheck``: with ``VIPPS_EMULATOR_CHECK_SPECS``, every answer checked against
  Vipps' OpenAPI files (the tests turn it on)
"""

from .admin import create_admin_app
from .app import create_emulator
from .faults import ApiFault, Faults, TokenFault
from .keys import emulator_state
from .payments import Money, Payment
from .serve import RunningEmulator, serve_emulator
from .settings import (
    DEFAULT_SETTINGS,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_MERCHANT_SERIAL_NUMBER,
    DEMO_SALES_UNIT,
    DEMO_SALES_UNIT_2,
    DEMO_SALES_UNITS,
    DEMO_SUBSCRIPTION_KEY,
    EmulatorSettings,
    SalesUnit,
)
from .state import EmulatorState, IssuedToken, ReceivedRequest, TokenStyle

__all__ = [
    "DEFAULT_SETTINGS",
    "DEMO_CLIENT_ID",
    "DEMO_CLIENT_SECRET",
    "DEMO_MERCHANT_SERIAL_NUMBER",
    "DEMO_SALES_UNIT",
    "DEMO_SALES_UNITS",
    "DEMO_SALES_UNIT_2",
    "DEMO_SUBSCRIPTION_KEY",
    "ApiFault",
    "EmulatorSettings",
    "EmulatorState",
    "Faults",
    "IssuedToken",
    "Money",
    "Payment",
    "ReceivedRequest",
    "RunningEmulator",
    "SalesUnit",
    "TokenFault",
    "TokenStyle",
    "create_admin_app",
    "create_emulator",
    "emulator_state",
    "serve_emulator",
]
