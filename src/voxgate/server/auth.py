"""Gateway token checks shared by every endpoint."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from aiohttp import web

from voxgate.errors import AuthenticationFailed, NotFound
from voxgate.protocols.relay import auth as relay_auth
from voxgate.protocols.relay.auth import GATEWAY_HEADERS, token_matches
from voxgate.server.services import SERVICES, Services
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


async def own_credential(s: Services, request: web.Request) -> Callable[[str], bool]:
    """Whether a credential is one of this server's own: any gateway's token, or a live
    client secret it (or another node) minted.

    Such a credential is the gateway token wherever it is found and nothing else: it is
    never taken for a client's own provider key, so it never reaches an upstream
    (``is_gateway_token`` of :func:`voxgate.protocols.relay.auth.read_credentials`).
    Client secrets live in the shared state, so the ones the request carries anywhere
    (headers, subprotocols, query) are looked up first; a state that cannot be read
    raises StateUnavailable rather than risk passing a secret on.
    """
    tokens = [t.secret.value for gw in s.settings.all_gateways() for t in gw.tokens]
    found: set[str] = set()
    for value in _client_secrets_in(request)[:MAX_SECRETS_LOOKED_UP]:
        if await s.client_secrets.get(value, now=s.clock.wall()) is not None:
            found.add(value)

    def matches(value: str) -> bool:
        # every comparison runs, so the time taken does not tell which token matched
        hit = False
        for token in tokens:
            if token:
                hit |= token_matches(value, token)
        return hit or value in found

    return matches


#: Client secrets looked up per request, at most (each is one state round trip).
MAX_SECRETS_LOOKED_UP = 4

_SECRET = re.compile(r"ek_[A-Za-z0-9_-]{8,}")


def _client_secrets_in(request: web.Request) -> list[str]:
    """Every ``ek_…`` value anywhere in the request's headers or query, once each."""
    seen: dict[str, None] = {}
    for value in (*request.headers.values(), *request.query.values()):
        for m in _SECRET.finditer(value):
            seen.setdefault(m.group(0), None)
    return list(seen)


def request_gateway(request: web.Request) -> GatewaySettings:
    """The gateway named in the path, after checking the request's token.

    Raises NotFound (404) for an unknown one, AuthenticationFailed (401)."""
    s = request.app[SERVICES]
    account, gateway = request.match_info["account"], request.match_info["gateway"]
    gw = s.settings.gateway(account, gateway)
    if gw is None:
        raise NotFound(f"unknown account or gateway {account}/{gateway}")
    authenticate(gw, token_from_headers(request.headers, allow_authorization=True))
    return gw
