"""``ws /v1/{account}/{gateway}/{provider}[/{path}]``: the provider relay endpoint.

Everything that can fail is checked before the upgrade so the client gets an HTTP
answer it can read: 404 unknown account/gateway/provider, 400 bad path or a malformed
WebSocket handshake, 426 not a WebSocket request, 401 token, 429 connection limit, 502
upstream failure (with the upstream's status). Only then is the client's upgrade accepted.

A session begins once those checks pass and the upstream is dialled; from then on it
leaves exactly one usage record whatever happens: the upstream refuses, the client
vanishes during the dial or the upgrade, the handler is cancelled (server shutdown), or
the relay ends in any way. The record is written after the session's slots are given
back, and the write itself retries and reports failures (:func:`voxgate.store.write_record`).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import hdrs, web

from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.errors import AuthenticationFailed, BadRequest, NotFound
from voxgate.protocols.relay.auth import (
    Credentials,
    parse_subprotocols,
    read_credentials,
)
from voxgate.protocols.relay.capture import Capture
from voxgate.protocols.relay.providers import Provider, build_upstream_request
from voxgate.protocols.relay.usage import meter_for
from voxgate.server.app import SERVICES, Services
from voxgate.server.auth import authenticate, own_credential
from voxgate.server.relay_service import Outcome, run_relay
from voxgate.server.sessions import UpgradeRequired, acquire_slots, save_record
from voxgate.settings import GatewaySettings, Limits, TokenSettings

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
        provider, request.headers, offered, request.query, is_gateway_token=own_credential(s)
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
    session = _new_session(request, s, gw, provider, token, limits, creds)
    slots = await acquire_slots(s, gw, token, limits, session.info.session_id)
    outcome = Outcome()
    try:
        return await run_relay(request, s, session, upstream_req, creds, limits, outcome)
    finally:
        try:
            # the slot is free as soon as the session is over, before the record is written
            for key in slots:
                await s.state.release_slot(key, session.info.session_id)
        finally:
            await save_record(s, session, outcome.client_code, outcome.upstream_code, outcome.error)


def _new_session(
    request: web.Request,
    s: Services,
    gw: GatewaySettings,
    provider: Provider,
    token: TokenSettings | None,
    limits: Limits,
    creds: Credentials,
) -> RelaySession:
    capture = None
    if gw.capture_payloads:
        relay = s.settings.relay
        capture = Capture(
            max_frames=relay.capture_max_frames,
            max_bytes=relay.capture_max_bytes,
            # besides configured secrets: the keys this client brought
            scrub=s.scrubber.with_secrets((creds.client_key, creds.gateway_token)),
        )
    info = SessionInfo(
        session_id=s.ids("sess"),
        account=gw.account,
        gateway=gw.name,
        provider=provider.name,
        model=request.query.get(provider.model_param) if provider.model_param else None,
        token_name=token.name if token is not None else None,
        client_address=request.remote,
    )
    return RelaySession(
        info,
        limits,
        now=asyncio.get_running_loop().time(),
        wall=s.clock.wall(),
        meter=meter_for(provider.usage),
        capture=capture,
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/{account}/{gateway}/{provider}", relay)
    app.router.add_get("/v1/{account}/{gateway}/{provider}/{path:.+}", relay)
