"""A wrapper that keeps secret strings out of reprs, logs and error messages."""

from __future__ import annotations

import hmac
from typing import Final

MASK: Final = "***"


class Secret:
    """A string that never shows itself: ``repr``, ``str`` and formatting give ``***``.

    The value is reached only through :meth:`reveal`, so every place that puts a secret
    on the wire is greppable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that sends it."""
        return self._value

    def matches(self, candidate: str) -> bool:
        """Constant-time comparison with ``candidate``, whatever it holds: header values
        that are not UTF-8 arrive with lone surrogates, which plain ``encode`` refuses."""
        return hmac.compare_digest(_utf8(self._value), _utf8(candidate))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and self.matches(other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # Worker processes receive the config by pickling; the value must survive that.
        return (Secret, (self._value,))


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")
