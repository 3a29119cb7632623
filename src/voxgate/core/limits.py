"""Limit arithmetic, free of clocks and sockets: callers pass ``now``."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes voxgate sends, documented in the README.

    The official OpenAI SDKs reconnect on their own after any of
    :data:`RECONNECTING_CODES`: a refusal (auth, a limit, a request the peer would only
    repeat) must use 1008 or a 4xxx code, never one of those; a draining node closes with
    1012 so that clients do reconnect, to another node.
    """

    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    AUTH_FAILED = 4000
    RATE_LIMITED = 4001
    MESSAGE_TOO_LARGE = 4002
    SESSION_TOO_LONG = 4003
    IDLE = 4008


CLOSE_REASONS: dict[int, str] = {
    CloseCode.AUTH_FAILED: "authentication failed",
    CloseCode.RATE_LIMITED: "rate limit exceeded",
    CloseCode.MESSAGE_TOO_LARGE: "message too large",
    CloseCode.SESSION_TOO_LONG: "session too long",
    CloseCode.IDLE: "idle timeout",
}

#: The setting whose limit each close code enforces (metrics label them so).
LIMIT_NAMES: dict[int, str] = {
    CloseCode.RATE_LIMITED: "messages_per_minute",
    CloseCode.MESSAGE_TOO_LARGE: "max_message_bytes",
    CloseCode.SESSION_TOO_LONG: "max_session_seconds",
    CloseCode.IDLE: "idle_seconds",
}

#: Codes after which the official OpenAI SDKs reconnect by themselves (spec/realtime.md,
#: "Close codes"): never the answer to a refusal, or a refused client retries forever.
RECONNECTING_CODES = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1015})

#: Codes that may not be sent in a close frame (RFC 6455 §7.4.1).
_UNSENDABLE = frozenset({1004, 1005, 1006, 1015})


def sendable_close_code(code: int | None, *, fallback: int) -> int:
    """``code`` if it may be put in a close frame, else ``fallback``."""
    if code is None or code in _UNSENDABLE:
        return fallback
    if 1000 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return fallback


class TokenBucket:
    """``rate_per_minute`` events per minute with a burst of one minute's worth."""

    __slots__ = ("_capacity", "_last", "_rate", "_tokens")

    def __init__(self, rate_per_minute: int, now: float) -> None:
        self._capacity = float(rate_per_minute)
        self._rate = rate_per_minute / 60.0
        self._tokens = self._capacity
        self._last = now

    def level(self, now: float) -> tuple[float, float]:
        """(tokens left, seconds until the bucket is full again) at ``now``; spends none."""
        tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        return tokens, (self._capacity - tokens) / self._rate if self._rate else 0.0

    def take(self, now: float) -> bool:
        """Spend one token if there is one; ``False`` means over the limit."""
        tokens = self._tokens + (now - self._last) * self._rate
        self._last = now
        if tokens > self._capacity:
            tokens = self._capacity
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
