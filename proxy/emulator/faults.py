"""Fault switches: what should go wrong, and for how many requests.

A test (or the admin app) sets fields on ``EmulatorState.faults``; each token or API
request asks for a snapshot with `Faults.take_token` / `Faults.take_api`. When
``fail_count`` is set, every request a fault is applied to counts once, and when the
count runs out every switch clears itself, so a test can watch the proxy recover.
How the faults are acted out on the wire lives in ``injection``.
"""

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, get_args

TokenFault = Literal["down", "slow", "error500", "invalid_json", "missing_fields", "split_answer"]
ApiFault = Literal["error500", "error503", "stall_headers", "stall_body", "reset_mid_body", "reset"]

TOKEN_FAULTS: frozenset[str] = frozenset(get_args(TokenFault))
API_FAULTS: frozenset[str] = frozenset(get_args(ApiFault))

# A stall that does not outlast a proxy's read timeout tests nothing, so the default
# delays are long; tests set short ones.
DEFAULT_DELAY = 30.0


@dataclass
class Faults:
    """The switches; all off by default.

    - ``token``: "down" closes the connection unanswered, "slow" waits ``token_delay``
      first, "error500" answers 500 with HTML, "invalid_json" a truncated JSON body,
      "missing_fields" a 200 without ``access_token``, "split_answer" a good answer
      written in two pieces ``token_delay`` apart (as a gateway or TLS records cut it).
    - ``expires_in_override``: issued tokens live (and say they live) this many seconds.
    - ``expires_in_text``: the literal ``expires_in`` and ``ext_expires_in`` the answer
      carries (``"nan"``, ``"1e-09"``); the token lives that long when it is a finite
      positive number, else the usual lifetime.
    - ``api``: "error500"/"error503" answer a problem, "stall_headers" waits
      ``api_delay`` before answering, "stall_body" sends the headers and part of the
      body then waits ``api_delay``, "reset_mid_body" sends part then aborts the
      connection, "reset" aborts without answering.
    - ``fail_count``: None applies the faults until cleared; n applies them to n
      requests, then clears every switch.
    """

    token: TokenFault | None = None
    token_delay: float = DEFAULT_DELAY
    expires_in_override: int | None = None
    expires_in_text: str | None = None
    api: ApiFault | None = None
    api_delay: float = DEFAULT_DELAY
    fail_count: int | None = None

    def clear(self) -> None:
        """Switch every fault off."""
        for spec in fields(self):
            setattr(self, spec.name, spec.default)

    def take_token(self) -> "Faults | None":
        """The faults for one token request (None: none apply), counted against fail_count."""
        if self.token is None and self.expires_in_override is None and not self.expires_in_text:
            return None
        return self._take()

    def take_api(self) -> "Faults | None":
        """The faults for one API request (None: none apply), counted against fail_count."""
        if self.api is None:
            return None
        return self._take()

    def as_json(self) -> dict[str, object]:
        """The switches as a JSON-ready dict."""
        return asdict(self)

    def _take(self) -> "Faults":
        snapshot = replace(self)
        if self.fail_count is not None:
            self.fail_count -= 1
            if self.fail_count <= 0:
                self.clear()
        return snapshot
