"""``ws /v1/{account}/{gateway}/{provider}[/{path}]``: the provider relay endpoint.

Everything that can fail is checked before the upgrade so the client gets an HTTP
answer it can read: 404 unknown account/gateway/provider, 400 bad path or a malformed
WebSocket handshake, 426 not a WebSocket request, 401 token, 429 connection limit, 502
upstream failure (with the upstream's status). Only then is the client's upgrade accepted.

A session begins once those checks pass and the upstream is dialled; from then on it
leaves exactly one usage record whatever happens: the upstream refuses, the client
vanishes during the dial or the upgrade, the handler is cancelled (server shutdown), or
the relay ends in any way (:func:`voxgate.server.sessions.open_session`).
"""

from __future__ import annotations

import logging

from aiohttp import hdrs, web

from voxgate.core.relay import SessionInfo
from voxgate.errors import AuthenticationFailed, BadRequest, NotFound
from voxgate.protocols.relay.auth import (
    Credentials,
    parse_subprotocols,
    read_credentials,
)
from voxgate.protocols.relay.capture import Capture
from voxgate.protocols.relay.providers import build_upstream_request
from voxgate.protocols.relay.usage import meter_for
from voxgate.server.auth import authenticate, own_credential
from voxgate.server.relay_service import run_relay
from voxgate.server.services import SERVICES, Services
from voxgate.server.sessions import UpgradeRequired, open_session
from voxgate.settings import GatewaySettings

log = logging.getLogger("voxgate.relay")


async def relay(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    mi = request.match_info
    account, gateway, provider_name = mi["account"], mi["gateway"], mi["provider"]
    gw = s.settings.gateway(account, gateway)
    if gw is None:
        raise NotFound(f"unknown account or gateway {account}/{gateway}")
    provider = s.providers.get(provider_name)
    if provider is None:
        raise NotFound(f"unknown provider {provider_name!r}")
    if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
        raise UpgradeRequired()
    if not web.WebSocketResponse().can_prepare(request).ok:
        # checked before the upstream is dialled: aiohttp would refuse it at the upgrade
        raise BadRequest("not a valid WebSocket handshake (Sec-WebSocket-Key, -Version)")
    offered = parse_subprotocols(request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ()))
    creds = read_credentials(
        provider,
        request.headers,
        offered,
        request.query,
        is_gateway_token=await own_credential(s, request),
    )
    try:
        token = authenticate(gw, creds.gateway_token)
    except AuthenticationFailed:
        s.metrics.handshake_rejections[(401, "auth")] += 1
        raise
    upstream_req = build_upstream_request(
        provider,
        path=mi.get("path", ""),
        query_string=request.raw_path.partition("?")[2],
        client_headers=request.headers.items(),
        upstream_subprotocols=creds.upstream_subprotocols,
        client_key=creds.client_key,
        client_key_param=creds.client_key_param,
        drop_query=creds.drop_query,
        stored_key=gw.keys[provider.name].value if provider.name in gw.keys else None,
    )
    limits = token.limits if token is not None and token.limits is not None else gw.limits
    info = SessionInfo(
        session_id=s.ids("sess"),
        account=gw.account,
        gateway=gw.name,
        provider=provider.name,
        model=request.query.get(provider.model_param) if provider.model_param else None,
        token_name=token.name if token is not None else None,
        client_address=request.remote,
    )
    async with open_session(
        s,
        info,
        gw=gw,
        token=token,
        limits=limits,
        meter=meter_for(provider.usage),
        capture=_capture(s, gw, creds),
    ) as live:
        return await run_relay(request, s, live, upstream_req, creds, limits)


def _capture(s: Services, gw: GatewaySettings, creds: Credentials) -> Capture | None:
    """What of the session's frames the record keeps (``capture_payloads``)."""
    if not gw.capture_payloads:
        return None
    relay = s.settings.relay
    return Capture(
        max_frames=relay.capture_max_frames,
        max_bytes=relay.capture_max_bytes,
        # besides configured secrets: the keys this client brought
        scrub=s.scrubber.with_secrets((creds.client_key, creds.gateway_token)),
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/{account}/{gateway}/{provider}", relay)
    app.router.add_get("/v1/{account}/{gateway}/{provider}/{path:.+}", relay)
