"""Reading a provider's own usage figures from relayed frames (sans-I/O).

Only text (JSON) frames are looked at, and only those that contain the marker of an
event that carries usage: a substring test first (cheap, no parse), then one
``orjson`` parse of the few frames that pass. Audio frames are never decoded.
"""

from __future__ import annotations

from typing import Any

import orjson


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
        i = inp if isinstance(inp, int) else 0
        o = out if isinstance(out, int) else 0
        self.input_tokens += i
        self.output_tokens += o
        self.total_tokens += total if isinstance(total, int) else i + o


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
