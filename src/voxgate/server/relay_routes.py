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
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs, web

from voxgate.core.limits import LIMIT_NAMES
from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.errors import AuthenticationFailed, BadRequest, NotFound, UpstreamError
from voxgate.protocols.relay.auth import (
    Credentials,
    parse_subprotocols,
    read_credentials,
    select_subprotocol,
)
from voxgate.protocols.relay.capture import Capture
from voxgate.protocols.relay.providers import Provider, UpstreamRequest, build_upstream_request
from voxgate.protocols.relay.usage import meter_for
from voxgate.server.app import SERVICES, Services
from voxgate.server.auth import authenticate, own_credential
from voxgate.server.sessions import UpgradeRequired, accept_client, acquire_slots, save_record
from voxgate.settings import GatewaySettings, Limits, TokenSettings
from voxgate.transports.relay import SHUTDOWN, Ending, RelayConnection
from voxgate.transports.ws import AiohttpChannel

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


@dataclass
class Outcome:
    """What the usage record says about how the session ended."""

    client_code: int | None = None
    upstream_code: int | None = None
    error: str | None = "internal_error"


async def run_relay(
    request: web.Request,
    s: Services,
    session: RelaySession,
    upstream_req: UpstreamRequest,
    creds: Credentials,
    limits: Limits,
    outcome: Outcome,
) -> web.StreamResponse:
    """Dial the upstream, upgrade the client, relay; ``outcome`` says how it ended."""
    loop = asyncio.get_running_loop()
    provider = session.info.provider
    started = loop.time()
    try:
        upstream_ws = await s.connector.connect(upstream_req, heartbeat=limits.heartbeat_seconds)
    except UpstreamError as exc:
        log.warning("upstream connect failed: %s", exc, extra={"session": session.info.session_id})
        s.metrics.upstream_failures[(provider, exc.reason)] += 1
        s.metrics.handshake_rejections[(502, exc.reason)] += 1
        outcome.error = f"upstream_{exc.reason}"
        raise
    except asyncio.CancelledError:
        outcome.error = "server_shutdown"
        raise
    s.metrics.observe_connect(provider, loop.time() - started)
    try:
        ws = await accept_client(
            request, s, limits, select_subprotocol(creds, upstream_ws.protocol)
        )
    except (ConnectionError, RuntimeError):
        # the client vanished while the upstream was dialled or during the upgrade
        outcome.upstream_code, outcome.error = 1001, "client_disconnected"
        await _close_upstream(s, upstream_ws, 1001, "client went away")
        return web.Response(status=CLIENT_GONE)
    except BaseException as exc:  # cancelled, or refused by aiohttp: never leak the upstream
        cancelled = isinstance(exc, asyncio.CancelledError)
        outcome.upstream_code = 1001
        outcome.error = "server_shutdown" if cancelled else "internal_error"
        await _close_upstream(s, upstream_ws, 1001, "gateway error")
        raise
    conn = RelayConnection(
        session,
        AiohttpChannel(ws),
        AiohttpChannel(upstream_ws),
        close_timeout=s.settings.server.shutdown_timeout_seconds,
    )
    s.live.add(conn)
    if s.draining.is_set():  # the server began to shut down during the dial or upgrade
        conn.stop()
    s.metrics.session_opened(session)
    log.info(
        "relay open",
        extra={
            "session": session.info.session_id,
            "provider": provider,
            "upstream": upstream_req.redacted_url(),
            "token_name": session.info.token_name,
        },
    )
    try:
        await conn.run()
    finally:
        s.live.discard(conn)
        _closed(s, session, conn.ending or SHUTDOWN, outcome)
    return ws


#: The status logged for a request whose client left before its answer (nginx's 499).
CLIENT_GONE = 499


async def _close_upstream(
    s: Services, upstream_ws: aiohttp.ClientWebSocketResponse, code: int, reason: str
) -> None:
    try:
        async with asyncio.timeout(s.settings.server.shutdown_timeout_seconds):
            await upstream_ws.close(code=code, message=reason.encode())
    except (TimeoutError, ConnectionError, RuntimeError) as exc:
        log.debug("upstream close did not complete: %s", type(exc).__name__)


def _closed(s: Services, session: RelaySession, ending: Ending, outcome: Outcome) -> None:
    """Count and log a relayed session's end, and put it in the outcome for the record."""
    if ending.limit is not None:
        s.metrics.limit_rejections[LIMIT_NAMES[ending.limit]] += 1
    s.metrics.session_closed(session, ending.client_code, ending.upstream_code)
    outcome.client_code, outcome.upstream_code = ending.client_code, ending.upstream_code
    outcome.error = ending.error
    log.info(
        "relay closed",
        extra={
            "session": session.info.session_id,
            "client_code": ending.client_code,
            "upstream_code": ending.upstream_code,
            "error": ending.error,
        },
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/{account}/{gateway}/{provider}", relay)
    app.router.add_get("/v1/{account}/{gateway}/{provider}/{path:.+}", relay)
