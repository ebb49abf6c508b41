"""Event names: every log line's ``event`` is one of these constants."""

from typing import Final

REQUEST_COMPLETED: Final = "request_completed"
INTERNAL_ERROR: Final = "internal_error"
TOKEN_FETCHED: Final = "token_fetched"
TOKEN_REFRESH_FAILED: Final = "token_refresh_failed"
TOKEN_REJECTED: Final = "token_rejected_by_upstream"
TLS_VERIFY_DISABLED: Final = "tls_verify_disabled"
STARTUP: Final = "proxy_started"
SHUTDOWN_STARTED: Final = "shutdown_started"
SHUTDOWN: Final = "proxy_stopped"
WORKER_EXITED: Final = "worker_exited"
EMULATOR_STARTED: Final = "emulator_started"
AIOHTTP: Final = "aiohttp"
