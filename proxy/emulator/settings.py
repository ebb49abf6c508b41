"""Who the emulator knows and how it answers: sales units and settings.

The two demo sales units are public, made-up credentials: `vipps-proxy demo` and the
test suite configure the proxy with them.
"""

from dataclasses import dataclass, field

SPECS_ENV = "VIPPS_EMULATOR_CHECK_SPECS"  # a folder of OpenAPI files: see speccheck


@dataclass(frozen=True)
class SalesUnit:
    """One sales unit (merchant) whose credentials the emulator accepts.

    The secrets are kept out of ``repr`` so that a logged unit shows nothing secret.
    """

    client_id: str
    client_secret: str = field(repr=False)
    subscription_key: str = field(repr=False)
    merchant_serial_number: str
    # Old estates called the token endpoint with a key of their own; None: the same key.
    token_subscription_key: str | None = field(default=None, repr=False)

    @property
    def token_key(self) -> str:
        """The subscription key this unit sends to the token endpoints."""
        return self.token_subscription_key or self.subscription_key


DEMO_CLIENT_ID = "demo-client-id"
DEMO_CLIENT_SECRET = "demo-client-secret"
DEMO_SUBSCRIPTION_KEY = "demo-subscription-key"
DEMO_MERCHANT_SERIAL_NUMBER = "123456"

DEMO_SALES_UNIT = SalesUnit(
    client_id=DEMO_CLIENT_ID,
    client_secret=DEMO_CLIENT_SECRET,
    subscription_key=DEMO_SUBSCRIPTION_KEY,
    merchant_serial_number=DEMO_MERCHANT_SERIAL_NUMBER,
)
DEMO_SALES_UNIT_2 = SalesUnit(
    client_id="demo2-client-id",
    client_secret="demo2-client-secret",
    subscription_key="demo2-subscription-key",
    merchant_serial_number="654321",
)
DEMO_SALES_UNITS = (DEMO_SALES_UNIT, DEMO_SALES_UNIT_2)

DEFAULT_RESOURCE = "https://api.vipps.no"


@dataclass(frozen=True)
class EmulatorSettings:
    """What an emulator instance accepts and how its answers are shaped."""

    sales_units: tuple[SalesUnit, ...] = DEMO_SALES_UNITS
    # Seconds a token lives; it really stops working after that (time.monotonic).
    token_lifetime: float = 3600.0
    # False: all seven /accesstoken/get fields are JSON strings, as the real API sends.
    expires_in_as_number: bool = False
    # The `resource` a jwt-token request must name; echoed in every token response.
    resource: str = DEFAULT_RESOURCE
    # None: a created payment stays CREATED until the user approves it, which here is
    # POST /epayment/v1/test/payments/{reference}/approve, as at Vipps. A number: it is
    # also approved that many seconds after its creation (0: at once).
    auto_approve: float | None = None
    # How many API requests EmulatorState.received keeps (the oldest drop out).
    received_limit: int = 1000


# Frozen, so one shared default instance is safe.
DEFAULT_SETTINGS = EmulatorSettings()
