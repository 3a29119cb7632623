"""Removing secrets from text before it is kept anywhere: log lines, captured frames.

A :class:`SecretScrubber` replaces every configured secret value (in its plain form and
as it appears inside a JSON string), anything after the ``Bearer``/``Token``/``Key`` auth
schemes, secret-bearing query parameters and the gateway's and providers' key-carrying
subprotocol entries. It is a pure function of its text (no I/O), built once from the
settings in the composition root and passed down; :meth:`SecretScrubber.with_secrets`
adds the secrets one session brought (a client's own provider key).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import orjson

_SCHEME = re.compile(r"\b(Bearer|bearer|Token|Key)\s+[A-Za-z0-9._~+/=-]{12,}")
_SCHEME_WORDS = ("Bearer", "bearer", "Token", "Key")
#: Each pattern with a lower-case literal that any match contains: the pattern runs only
#: on text that holds it (a substring test is ~100 times cheaper than the regex).
_PREFIXED = [
    (re.compile(r"(?i)([?&](?:key|api_key|access_token|token|xi-api-key)=)[^&\s\"']+"), "="),
    (re.compile(r"(?i)((?:voxgate|cf-aig)-authorization\.)[^,\s\"']+"), "authorization."),
    (
        re.compile(r"(?i)((?:openai-insecure-api-key|xi-api-key|fal-api-key)\.)[^,\s\"']+"),
        "api-key.",
    ),
]
#: Secrets shorter than this are not replaced by value (they would match ordinary words).
MIN_SECRET_CHARS = 4
#: The widest text one replacement can span, besides the secrets themselves: a caller
#: that keeps only a prefix of a text scrubs this much more than it keeps.
PATTERN_MARGIN = 64


def _json_form(secret: str) -> str:
    """How ``secret`` appears inside a JSON string (differs when it holds ``"``, ``\\``…)."""
    return orjson.dumps(secret).decode()[1:-1]


class SecretScrubber:
    """``scrub(text)`` returns ``text`` with every secret it can recognise replaced."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: Iterable[str | None]) -> None:
        forms = {f for s in secrets if s and len(s) >= MIN_SECRET_CHARS for f in (s, _json_form(s))}
        # Longest first so that a secret containing another is replaced whole.
        self.secrets: tuple[str, ...] = tuple(sorted(forms, key=len, reverse=True))

    def with_secrets(self, extra: Iterable[str | None]) -> SecretScrubber:
        """A scrubber that also replaces ``extra`` (e.g. one session's own keys)."""
        return SecretScrubber((*self.secrets, *extra))

    @property
    def margin(self) -> int:
        """How far past a kept prefix a secret or pattern can reach (see :data:`PATTERN_MARGIN`)."""
        return max((len(s) for s in self.secrets), default=0) + PATTERN_MARGIN

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        if any(w in text for w in _SCHEME_WORDS):
            text = _SCHEME.sub(lambda m: f"{m.group(1)} ***", text)
        lower = text.lower()
        for pat, literal in _PREFIXED:
            if literal in lower:
                text = pat.sub(lambda m: f"{m.group(1)}***", text)
        return text
