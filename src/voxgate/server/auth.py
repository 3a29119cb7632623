"""Gateway token checks shared by every endpoint."""

from __future__ import annotations

from collections.abc import Mapping

from voxgate.errors import AuthenticationFailed
from voxgate.protocols.relay import auth as relay_auth
from voxgate.protocols.relay.auth import GATEWAY_HEADERS, token_matches
from voxgate.settings import GatewaySettings, TokenSettings


def authenticate(gw: GatewaySettings, presented: str | None) -> TokenSettings | None:
    """The token a request presented, or ``None`` on a gateway with no tokens.

    A gateway with tokens configured fails closed: a token whose environment variable
    is unset matches nothing. Raises :class:`AuthenticationFailed`.
    """
    if not gw.tokens:
        return None
    if not presented:
        raise AuthenticationFailed("missing gateway token")
    for tok in gw.tokens:
        if tok.secret.value and token_matches(presented, tok.secret.value):
            return tok
    raise AuthenticationFailed("invalid gateway token")


def token_from_headers(headers: Mapping[str, str], *, allow_authorization: bool) -> str | None:
    """A gateway token from the gateway headers (and ``Authorization`` where allowed)."""
    names = (*GATEWAY_HEADERS, "authorization") if allow_authorization else GATEWAY_HEADERS
    return relay_auth.token_from_headers(headers, names)
