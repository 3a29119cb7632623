"""Short-lived client secrets (``ek_…``) for browsers: minted by a server holding a gateway
token, each bound to a session config, usable until it expires.

They are kept in the shared state (:class:`~voxgate.state.StateBackend`), so a secret
minted on one node opens a session on any node. What is kept is the session the client
asked for as it sent it, and re-read on use: the same checks give the same config.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any, Protocol

import orjson

from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.session import SessionConfig, apply_update

MIN_TTL, MAX_TTL, DEFAULT_TTL = 10, 7200, 600


class SecretStore(Protocol):
    """Where secrets live (a :class:`~voxgate.state.StateBackend`)."""

    async def put_secret(self, value: str, payload: bytes, expires_at: float) -> None: ...

    async def get_secret(self, value: str, *, now: float) -> bytes | None: ...


@dataclass(frozen=True)
class ClientSecret:
    value: str
    expires_at: float
    config: SessionConfig
    #: ``account/gateway`` and the token that minted it (its limits apply).
    gateway: str
    token_name: str | None


class ClientSecrets:
    def __init__(self, store: SecretStore) -> None:
        self._store = store

    async def mint(
        self,
        session: dict[str, Any] | None,
        *,
        model: str,
        now: float,
        ttl: int,
        gateway: str,
        token_name: str | None,
    ) -> ClientSecret:
        """A new secret for ``session`` (the client's fields, already checked by
        :func:`apply_update`) running ``model``. Raises StateUnavailable."""
        value = "ek_" + secrets.token_urlsafe(24)
        expires_at = now + ttl
        payload = {
            "session": session or {},
            "model": model,
            "expires_at": expires_at,
            "gateway": gateway,
            "token_name": token_name,
        }
        await self._store.put_secret(value, orjson.dumps(payload), expires_at)
        return _secret(value, payload)

    async def get(self, value: str, *, now: float) -> ClientSecret | None:
        """The live secret ``value`` names, or ``None`` (unknown, expired, or kept by a
        version that wrote it differently). Raises StateUnavailable."""
        if not value.startswith("ek_"):
            return None
        raw = await self._store.get_secret(value, now=now)
        if raw is None:
            return None
        try:
            return _secret(value, orjson.loads(raw))
        except (ValueError, KeyError, TypeError, ClientEventError):
            return None


def _secret(value: str, payload: dict[str, Any]) -> ClientSecret:
    config = replace(apply_update(SessionConfig(), payload["session"]), model=payload["model"])
    return ClientSecret(
        value, float(payload["expires_at"]), config, payload["gateway"], payload["token_name"]
    )
