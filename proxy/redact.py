"""The second line of defence: scrub known secret values from anything logged.

The first line is that no code logs a secret. This catches the rest: an upstream error
body that echoes a key, an exception message that quotes a header. Known values are
the config's secrets and every token fetched; the config's secrets also in base64
(standard and URL-safe, without padding: the secret alone, and the Basic header's
``id:secret``, which the config lists as a secret of its own). Any of these may be written with some
of its characters JSON-escaped (``\\u002d``, ``\\/``) or percent-encoded (either case).

A configured URL's query values (``deliver_to``'s ``?app_key=...``) are secrets too:
``query_values`` gives them to the config's list, and ``masked_url`` shows such a URL
with each value masked (``vipps-proxy check``).

The plain forms are worked out once, when a secret becomes known; a text is searched
for them, the longest first, skipping those longer than the text. Only a text with
``%`` or a backslash can hold an escaped form: it is decoded once and searched again,
and a form found there is masked in the text by a pattern made for it (then kept).
"""

from __future__ import annotations

import base64
import bisect
import re
from collections.abc import Iterable, MutableMapping
from typing import Any, Final
from urllib.parse import unquote

from yarl import URL

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
_JSON_ESCAPE: Final = re.compile(r'\\(u[0-9a-fA-F]{4}|["\\/bfnrt])')
#: JSON's short escapes: the letter after the backslash, and the character it stands for.
_JSON_SHORT: Final = dict(zip('"\\/bfnrt', '"\\/\b\f\n\r\t', strict=True))
_JSON_SHORT_FOR: Final = {char: letter for letter, char in _JSON_SHORT.items()}
MAX_PATTERNS: Final = 256  # escaped-form patterns kept; made only when one is found


class Redactor:
    """Replaces every known secret value with ``***``; also a structlog processor."""

    def __init__(self, secrets: Iterable[Secret] = ()) -> None:
        self._fixed = [s.reveal() for s in secrets if len(s.reveal()) >= MIN_SECRET_LENGTH]
        self._tokens: list[str] = []
        self._values: tuple[str, ...] = ()
        self._longest_first: list[int] = []  # minus each value's length, for bisect
        self._patterns: dict[str, re.Pattern[str]] = {}
        self._plain_keys: set[str] = set()  # log keys seen not to be sensitive
        self._remember()

    def learn(self, secrets: Iterable[Secret]) -> None:
        """Remember a reloaded config's secrets too (the old ones stay known)."""
        new = [s.reveal() for s in secrets if len(s.reveal()) >= MIN_SECRET_LENGTH]
        new = [value for value in new if value not in self._fixed]
        if new:
            self._fixed = [*self._fixed, *new]
            self._remember()

    def add(self, value: str) -> None:
        """Remember a new secret (a fetched token)."""
        if len(value) < MIN_SECRET_LENGTH or value in self._tokens:
            return
        self._tokens = [*self._tokens[-(MAX_TOKENS_KEPT - 1) :], value]
        self._remember()

    def _remember(self) -> None:
        """Every plain form of every secret, longest first, so that a secret that
        contains another is masked whole."""
        # A token goes on the wire as written (it is base64url already), so it is
        # searched as written and escaped, not in base64: one search less per line.
        forms = {form for value in self._fixed for form in _forms(value)}
        forms.update(self._tokens)
        self._values = tuple(sorted(forms, key=len, reverse=True))
        self._longest_first = [-len(value) for value in self._values]

    def _fitting(self, text: str) -> tuple[str, ...]:
        """The plain forms no longer than ``text``: the others cannot be in it."""
        if not self._values or len(text) >= len(self._values[0]):
            return self._values
        return self._values[bisect.bisect_left(self._longest_first, -len(text)) :]

    def redact_text(self, text: str) -> str:
        # Escaped forms first: masking a plain form first could take the start of an
        # escape with it (secret ``x%`` written ``x%25`` would leave ``***25``).
        if _may_hide(text):
            decoded = _decoded(text)
            for value in self._fitting(decoded):
                if value in decoded:
                    text = self._pattern(value).sub(MASK, text)
        for value in self._fitting(text):
            if value in text:
                text = text.replace(value, MASK)
        return text

    def _pattern(self, value: str) -> re.Pattern[str]:
        pattern = self._patterns.get(value)
        if pattern is None:
            pattern = re.compile("".join(map(_char_pattern, value)))
            if len(self._patterns) < MAX_PATTERNS:
                self._patterns[value] = pattern
        return pattern

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
        if any(map(joined.__contains__, self._fitting(joined))):
            return False
        if not _may_hide(joined):
            return True
        decoded = _decoded(joined)
        return not any(map(decoded.__contains__, self._fitting(decoded)))

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


def _forms(secret: str) -> tuple[str, ...]:
    """A secret and its base64 forms. Unpadded: the padding may be escaped or dropped."""
    raw = secret.encode("utf-8", "surrogatepass")
    standard = base64.b64encode(raw).decode("ascii").rstrip("=")
    return (secret, standard, standard.replace("+", "-").replace("/", "_"))


def _may_hide(text: str) -> bool:
    """Only a text with ``%`` or a backslash can hold an escaped form of a secret."""
    return "%" in text or "\\" in text


def _decoded(text: str) -> str:
    """``text`` with JSON escapes, then percent-encodings, decoded."""
    if "\\" in text:
        text = _JSON_ESCAPE.sub(_json_char, text)
        # \ud83d\ude00 decodes to two halves of one character: join them.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return unquote(text, errors="surrogateescape") if "%" in text else text


def _json_char(match: re.Match[str]) -> str:
    escape = match.group(1)
    return chr(int(escape[1:], 16)) if len(escape) == 5 else _JSON_SHORT[escape]


def _char_pattern(char: str) -> str:
    """One character as written, JSON-escaped or percent-encoded (hex in either case)."""
    units = char.encode("utf-16-be", "surrogatepass").hex()  # two for an astral one
    json = "".join("\\\\u" + _any_case(units[i : i + 4]) for i in range(0, len(units), 4))
    options = [json]
    if char in _JSON_SHORT_FOR:
        options.append(re.escape("\\" + _JSON_SHORT_FOR[char]))
    encoded = char.encode("utf-8", "surrogatepass")
    options.append("".join("%" + _any_case(f"{byte:02x}") for byte in encoded))
    options.append(re.escape(char))  # last: a '%' or '\\' that starts an escape is its escape
    return "(?:" + "|".join(options) + ")"


def _any_case(hex_digits: str) -> str:
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in hex_digits)


def query_values(url: URL) -> tuple[str, ...]:
    """The values in ``url``'s query, decoded; a part without a value (``?k3y``) is
    taken for one."""
    return tuple(value or key for key, value in url.query.items() if value or key)


def masked_url(url: URL) -> str:
    """``url`` as written, each query value (or part without one) masked."""
    if not url.raw_query_string:
        return str(url)
    parts = [part.partition("=") for part in url.raw_query_string.split("&")]
    query = "&".join(f"{key}={MASK}" if equals else MASK for key, equals, _ in parts)
    return f"{url.with_query(None).with_fragment(None)}?{query}"
