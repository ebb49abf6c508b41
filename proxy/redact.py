"""The second line of defence: scrub known secret values from anything logged.

The first line is that no code logs a secret. This catches the rest: an upstream error
body that echoes a key, an exception message that quotes a header. Known values are
the config's secrets and every token fetched.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any, Final

from proxy.secret import MASK, Secret

SENSITIVE_KEYS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "ocp-apim-subscription-key",
        "client_secret",
        "client-secret",
        "access_token",
        "token_value",
        "password",
        "subscription_key",
    }
)
MAX_TOKENS_KEPT: Final = 64  # old tokens stay secret too, but memory stays bounded
MIN_SECRET_LENGTH: Final = 4  # scrubbing one-letter "secrets" would mangle every line
MAX_KEYS_KNOWN: Final = 1024  # bounds the set of log keys remembered as not sensitive
_SCALARS: Final = frozenset({int, float, bool, type(None)})


class Redactor:
    """Replaces every known secret value with ``***``; also a structlog processor."""

    def __init__(self, secrets: Iterable[Secret] = ()) -> None:
        self._fixed = [s.reveal() for s in secrets if len(s.reveal()) >= MIN_SECRET_LENGTH]
        self._tokens: list[str] = []
        self._values: tuple[str, ...] = tuple(self._fixed)
        self._plain_keys: set[str] = set()  # log keys seen not to be sensitive

    def add(self, value: str) -> None:
        """Remember a new secret (a fetched token)."""
        if len(value) < MIN_SECRET_LENGTH or value in self._tokens:
            return
        self._tokens = [*self._tokens[-(MAX_TOKENS_KEPT - 1) :], value]
        # Longest first, so a secret that contains another is masked whole.
        self._values = tuple(sorted({*self._fixed, *self._tokens}, key=len, reverse=True))

    def redact_text(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if self._is_clean(event_dict):  # the common line: nothing to change, one search
            return event_dict
        for key, value in event_dict.items():
            event_dict[key] = MASK if key.lower() in SENSITIVE_KEYS else self._clean(value)
        return event_dict

    def _is_clean(self, event_dict: MutableMapping[str, Any]) -> bool:
        """True for a line of plain strings and numbers with no sensitive key and no
        known secret: one search per secret over all strings joined, not per string."""
        if not self._plain_keys.issuperset(event_dict) and not self._plain(event_dict):
            return False
        texts = []
        for value in event_dict.values():
            kind = type(value)
            if kind is str:
                texts.append(value)
            elif kind not in _SCALARS:
                return False
        joined = "\n".join(texts)
        return not any(value in joined for value in self._values)

    def _plain(self, event_dict: MutableMapping[str, Any]) -> bool:
        """No key is sensitive; the keys are remembered, so most lines skip this."""
        if any(key.lower() in SENSITIVE_KEYS for key in event_dict):
            return False
        if len(self._plain_keys) < MAX_KEYS_KNOWN:
            self._plain_keys.update(event_dict)
        return True

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, int | float | bool | type(None)):
            return value
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if isinstance(value, dict):
            return {
                k: MASK if str(k).lower() in SENSITIVE_KEYS else self._clean(v)
                for k, v in value.items()
            }
        return self.redact_text(str(value))
