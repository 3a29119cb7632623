"""Short-lived client secrets (``ek_…``) for browsers: minted by a server holding a gateway
token, each bound to a session config, usable until it expires.

Kept in the process: a secret minted on one node works on that node. (Sharing them through
the :class:`~voxgate.state.StateBackend` is the way to several nodes.)
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from voxgate.protocols.realtime.session import SessionConfig

MIN_TTL, MAX_TTL, DEFAULT_TTL = 10, 7200, 600


@dataclass(frozen=True)
class ClientSecret:
    value: str
    expires_at: float
    config: SessionConfig
    #: ``account/gateway`` and the token that minted it (its limits apply).
    gateway: str
    token_name: str | None


class ClientSecrets:
    def __init__(self) -> None:
        self._secrets: dict[str, ClientSecret] = {}

    def mint(
        self, config: SessionConfig, *, now: float, ttl: int, gateway: str, token_name: str | None
    ) -> ClientSecret:
        self._expire(now)
        value = "ek_" + secrets.token_urlsafe(24)
        secret = ClientSecret(value, now + ttl, config, gateway, token_name)
        self._secrets[value] = secret
        return secret

    def get(self, value: str, *, now: float) -> ClientSecret | None:
        """The live secret ``value`` names, or ``None`` (unknown or expired)."""
        self._expire(now)
        return self._secrets.get(value)

    def _expire(self, now: float) -> None:
        for value in [v for v, s in self._secrets.items() if s.expires_at <= now]:
            del self._secrets[value]
