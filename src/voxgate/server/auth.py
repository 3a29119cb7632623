"""Gateway token checks shared by every endpoint."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from voxgate.errors import AuthenticationFailed
from voxgate.protocols.relay import auth as relay_auth
from voxgate.protocols.relay.auth import GATEWAY_HEADERS, token_matches
from voxgate.server.app import Services
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


def own_credential(s: Services) -> Callable[[str], bool]:
    """Whether a credential is one of this server's own: any gateway's token, or a live
    client secret it minted.

    Such a credential is the gateway token wherever it is found and nothing else: it is
    never taken for a client's own provider key, so it never reaches an upstream
    (``is_gateway_token`` of :func:`voxgate.protocols.relay.auth.read_credentials`).
    """
    tokens = [t.secret.value for gw in s.settings.all_gateways() for t in gw.tokens]

    def matches(value: str) -> bool:
        # every comparison runs, so the time taken does not tell which token matched
        hit = False
        for token in tokens:
            if token:
                hit |= token_matches(value, token)
        return hit or s.client_secrets.get(value, now=s.clock.wall()) is not None

    return matches
