"""Reading a provider's own usage figures from relayed frames (sans-I/O).

Only text (JSON) frames are looked at, and only those that contain the marker of an
event that carries usage: a substring test first (cheap, no parse), then one
``orjson`` parse of the few frames that pass. Audio frames are never decoded.

What an upstream reports is validated, not trusted: a count counts only when it is a
non-negative integer (:func:`reported_count`), one report adds at most
:data:`MAX_TOKENS_PER_REPORT`, and totals saturate at :data:`MAX_COUNT`, so they stay
exact in JSON and fit any database integer whatever an upstream sends.
"""

from __future__ import annotations

from typing import Any

import orjson

#: The most tokens one usage report adds; a larger figure is clamped to it.
MAX_TOKENS_PER_REPORT = 1_000_000_000
#: Where a session's totals saturate: the largest integer JSON readers keep exactly.
MAX_COUNT = 2**53 - 1


def reported_count(value: object) -> int | None:
    """A token count as reported by an upstream: ``None`` unless it is a non-negative
    integer (an integral float counts: JSON parsers read large integers as floats),
    else the count clamped to :data:`MAX_TOKENS_PER_REPORT`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None  # also NaN and the infinities
    if value < 0:
        return None
    return MAX_TOKENS_PER_REPORT if value >= MAX_TOKENS_PER_REPORT else int(value)


def saturating_add(total: int, n: int) -> int:
    """``total + n``, saturating at :data:`MAX_COUNT`."""
    return min(total + n, MAX_COUNT)


class UsageMeter:
    """Accumulates token counts for one session. Subclasses know one provider."""

    __slots__ = ("input_tokens", "output_tokens", "total_tokens")

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.total_tokens = 0

    def feed_text(self, data: str) -> None:
        """Look at one text frame from the upstream."""

    def feed_binary(self, data: bytes) -> None:
        """Look at one binary frame from the upstream."""

    def add(self, inp: int, out: int) -> None:
        self._add(inp, out, inp + out)

    def _add(self, inp: Any, out: Any, total: Any) -> None:
        """Count one report; figures that are not valid counts count as 0."""
        i = reported_count(inp) or 0
        o = reported_count(out) or 0
        t = reported_count(total)
        self.input_tokens = saturating_add(self.input_tokens, i)
        self.output_tokens = saturating_add(self.output_tokens, o)
        self.total_tokens = saturating_add(self.total_tokens, i + o if t is None else t)


class OpenAIUsageMeter(UsageMeter):
    """OpenAI Realtime: ``response.done`` carries ``response.usage``."""

    __slots__ = ()

    def feed_text(self, data: str) -> None:
        if '"response.done"' not in data:
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict) or event.get("type") != "response.done":
            return
        response = event.get("response")
        usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(usage, dict):
            self._add(
                usage.get("input_tokens"), usage.get("output_tokens"), usage.get("total_tokens")
            )


class GeminiUsageMeter(UsageMeter):
    """Gemini Live: server messages may carry ``usageMetadata`` (counted per message).

    Gemini sends its JSON messages in binary frames too; those are read only when they
    start with ``{`` and contain the marker, so audio is never parsed.
    """

    __slots__ = ()

    def feed_text(self, data: str) -> None:
        if '"usageMetadata"' in data:
            self._parse(data)

    def feed_binary(self, data: bytes) -> None:
        if data[:1] == b"{" and b'"usageMetadata"' in data:
            self._parse(data)

    def _parse(self, data: str | bytes) -> None:
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        usage = msg.get("usageMetadata") if isinstance(msg, dict) else None
        if isinstance(usage, dict):
            out = usage.get("responseTokenCount", usage.get("candidatesTokenCount"))
            self._add(usage.get("promptTokenCount"), out, usage.get("totalTokenCount"))


def meter_for(kind: str | None) -> UsageMeter:
    if kind == "openai":
        return OpenAIUsageMeter()
    if kind == "gemini":
        return GeminiUsageMeter()
    return UsageMeter()
