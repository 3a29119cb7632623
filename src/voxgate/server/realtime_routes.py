"""``ws /v1/realtime?model=…``: the OpenAI Realtime protocol, a voice agent or a relayed model.

Also ``/v1/realtime/client_secrets`` (short-lived browser tokens), the beta
``/v1/realtime/sessions``, and the Inworld-style address
``/api/v1/realtime/session?key=<session id>&protocol=realtime``.

Auth: ``Authorization: Bearer <gateway token or ek_ client secret>`` (``Basic`` too, as
Inworld clients send it), the gateway headers, or — for browsers — a subprotocol entry
``openai-insecure-api-key.<token>`` or ``voxgate-authorization.<token>``. The server answers
the ``realtime`` subprotocol when offered. Beta clients (``OpenAI-Beta: realtime=v1`` or
subprotocol ``openai-beta.realtime-v1``) get beta event names and session fields.

``model`` is ``provider/model``. A realtime model of a relay provider (``openai/gpt-realtime``)
makes the session a relay through the gateway; anything else runs the voice agent. A bare
OpenAI name (``gpt-realtime``), or none, runs ``[realtime] default_model`` or is relayed
(:mod:`voxgate.server.realtime_models` decides, for every route here).
Refusals before the upgrade: 400 unknown model, 401 token, 426 not WebSocket, 429 full.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from aiohttp import WSMsgType, hdrs, web

from voxgate.core.limits import CLOSE_REASONS
from voxgate.core.realtime.agent import RealtimeAgent
from voxgate.core.realtime.secrets import DEFAULT_TTL, MAX_TTL, MIN_TTL, ClientSecret
from voxgate.core.relay import SessionInfo
from voxgate.engines.base import EngineError
from voxgate.errors import AuthenticationFailed, BadRequest
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.protocol import RealtimeProtocol
from voxgate.protocols.realtime.session import (
    SessionConfig,
    apply_update,
    render_session,
)
from voxgate.protocols.relay.auth import (
    GATEWAY_SUBPROTOCOL_PREFIXES,
    Credentials,
    bearer,
    parse_subprotocols,
)
from voxgate.protocols.relay.providers import build_upstream_request
from voxgate.protocols.relay.usage import meter_for
from voxgate.server.auth import authenticate, token_from_headers
from voxgate.server.realtime_service import (
    agent_deps,
    authenticate_realtime,
    find_call,
    json_object,
    model_choice,
    resolve_model,
)
from voxgate.server.relay_service import run_relay
from voxgate.server.services import SERVICES, Services, json_response
from voxgate.server.sessions import (
    UpgradeRequired,
    accept_client,
    hold_slots,
    open_session,
    run_live,
)
from voxgate.settings import GatewaySettings, Limits, TokenSettings
from voxgate.transports.realtime_call import RealtimeCall
from voxgate.transports.speech import SpeechConnection
from voxgate.transports.ws import AiohttpChannel

log = logging.getLogger("voxgate.realtime")

BROWSER_KEY_PREFIX = "openai-insecure-api-key."
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


def _credentials(request: web.Request) -> Credentials:
    """The token (gateway token or ``ek_`` secret) and the subprotocols left for upstream."""
    offered = parse_subprotocols(request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ()))
    token = token_from_headers(request.headers, allow_authorization=False)
    auth = request.headers.get(hdrs.AUTHORIZATION, "")
    if token is None and auth[:6].lower() == "basic ":
        token = auth[6:].strip() or None  # Inworld sends its key as Basic
    token = token or bearer(auth or None)
    entry, remaining = None, []
    for item in offered:
        prefix = next(
            (p for p in (*GATEWAY_SUBPROTOCOL_PREFIXES, BROWSER_KEY_PREFIX) if item.startswith(p)),
            None,
        )
        if prefix is None:
            remaining.append(item)
        elif entry is None:
            entry, token = item, token or item[len(prefix) :] or None
    return Credentials(token, entry, None, None, (), offered, tuple(remaining))


async def realtime(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
        raise UpgradeRequired()
    gw = s.settings.speech_gateway()
    creds = _credentials(request)
    token, secret = await authenticate_realtime(s, gw, creds.gateway_token)
    limits = token.limits if token is not None and token.limits is not None else gw.limits
    if "call_id" in request.query:
        call = find_call(request.app, request.query["call_id"])
        # a connection like any other: it takes a slot (its usage is the call's)
        async with hold_slots(s, gw, token, limits, s.ids("sideband")):
            return await _sideband(request, s, call, limits, creds)
    config = secret.config if secret is not None else SessionConfig()
    # a client secret's session names its model (the default one when the client named none)
    named = request.query.get("model") or (config.model if secret is not None else None)
    choice = model_choice(s, gw, named)
    beta = (
        "realtime=v1" in request.headers.get("OpenAI-Beta", "") or BETA_SUBPROTOCOL in creds.offered
    )
    if choice.relay:
        return await _relay(request, s, gw, token, limits, creds, choice.run)
    try:
        resolve_model(s, gw, choice.echo)
    except EngineError as exc:
        raise BadRequest(exc.public_message) from None
    config = replace(config, model=choice.echo)
    info = SessionInfo(
        session_id=s.ids("sess"),
        account=gw.account,
        gateway=gw.name,
        provider=choice.provider,
        model=choice.run,
        token_name=token.name if token is not None else None,
        client_address=request.remote,
        kind="realtime",
    )
    async with open_session(s, info, gw=gw, token=token, limits=limits) as live:
        counters = live.counters
        subprotocol = "realtime" if "realtime" in creds.offered else creds.gateway_entry
        ws = await accept_client(request, s, limits, subprotocol)
        conn = SpeechConnection(
            counters, AiohttpChannel(ws), close_timeout=s.settings.server.shutdown_timeout_seconds
        )
        agent = RealtimeAgent(
            protocol=RealtimeProtocol(
                ids=s.ids, beta=beta, max_audio_bytes=limits.max_audio_chunk_bytes
            ),
            config=config,
            deps=agent_deps(s, gw),
            counters=counters,
            send=conn.send,
            ids=s.ids,
            session_id=info.session_id,
            expires_at=int(s.clock.wall() + limits.max_session_seconds),
        )
        ending = await run_live(s, ws, conn, lambda: agent, start=agent.start)
        live.end.set(ending.code, None, ending.error)
        return ws


async def _relay(
    request: web.Request,
    s: Services,
    gw: GatewaySettings,
    token: TokenSettings | None,
    limits: Limits,
    creds: Credentials,
    model: str,
) -> web.StreamResponse:
    """Relay the session to the provider's own realtime model, with the stored key."""
    provider_name, _, name = model.partition("/")
    provider = s.providers[provider_name]
    query = [(k, v) for k, v in request.query.items() if k not in ("model", "key", "protocol")]
    qs = "&".join(f"{k}={v}" for k, v in [("model", name), *query])
    upstream_req = build_upstream_request(
        provider,
        path="",
        query_string=qs,
        client_headers=request.headers.items(),
        upstream_subprotocols=creds.upstream_subprotocols,
        client_key=None,
        stored_key=gw.keys[provider.name].value if provider.name in gw.keys else None,
    )
    info = SessionInfo(
        session_id=s.ids("sess"),
        account=gw.account,
        gateway=gw.name,
        provider=provider.name,
        model=name,
        token_name=token.name if token is not None else None,
        client_address=request.remote,
        kind="realtime",
    )
    async with open_session(
        s, info, gw=gw, token=token, limits=limits, meter=meter_for(provider.usage)
    ) as live:
        return await run_relay(request, s, live, upstream_req, creds, limits)


# --- client secrets ----------------------------------------------------------------------


async def _read_json(request: web.Request) -> dict[str, Any]:
    body = await request.read()
    return json_object(body, "the body") if body else {}


async def _mint(request: web.Request, session: Any, ttl: Any) -> tuple[ClientSecret, str]:
    s = request.app[SERVICES]
    gw = s.settings.speech_gateway()
    presented = token_from_headers(request.headers, allow_authorization=True)
    if presented is not None and presented.startswith("ek_"):
        raise AuthenticationFailed("a client secret cannot mint another: use a gateway token")
    token = authenticate(gw, presented)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not MIN_TTL <= ttl <= MAX_TTL:
        raise BadRequest(f"expires_after.seconds must be an integer from {MIN_TTL} to {MAX_TTL}")
    try:
        config = apply_update(SessionConfig(), session if session is not None else {})
        named = config.model if isinstance(session, dict) and "model" in session else None
        config = replace(config, model=model_choice(s, gw, named).echo)
        resolve_model(s, gw, config.model)
    except ClientEventError as exc:
        raise BadRequest(
            f"{exc.param}: {exc.public_message}" if exc.param else exc.public_message
        ) from None
    except EngineError as exc:
        raise BadRequest(f"session.model: {exc.public_message}") from None
    secret = await s.client_secrets.mint(
        session if isinstance(session, dict) else None,
        model=config.model,
        now=s.clock.wall(),
        ttl=ttl,
        gateway=f"{gw.account}/{gw.name}",
        token_name=token.name if token is not None else None,
    )
    return secret, s.ids("sess")


async def client_secrets(request: web.Request) -> web.Response:
    """``POST /v1/realtime/client_secrets`` {expires_after: {anchor, seconds}, session}."""
    body = await _read_json(request)
    expires = body.get("expires_after") or {}
    if not isinstance(expires, dict) or expires.get("anchor", "created_at") != "created_at":
        raise BadRequest('expires_after must be {anchor: "created_at", seconds}')
    secret, sid = await _mint(request, body.get("session"), expires.get("seconds", DEFAULT_TTL))
    expires_at = int(secret.expires_at)
    stt = request.app[SERVICES].settings.speech.default_stt
    session = render_session(secret.config, session_id=sid, expires_at=expires_at, stt=stt)
    return json_response({"value": secret.value, "expires_at": expires_at, "session": session})


async def beta_sessions(request: web.Request) -> web.Response:
    """``POST /v1/realtime/sessions`` (beta): the session fields flat, a secret inside."""
    body = await _read_json(request)
    secret, sid = await _mint(request, body, DEFAULT_TTL)
    expires_at = int(secret.expires_at)
    stt = request.app[SERVICES].settings.speech.default_stt
    out = render_session(secret.config, session_id=sid, expires_at=expires_at, beta=True, stt=stt)
    out["client_secret"] = {"value": secret.value, "expires_at": expires_at}
    return json_response(out)


async def _sideband(
    request: web.Request, s: Services, call: RealtimeCall, limits: Limits, creds: Credentials
) -> web.StreamResponse:
    """``ws /v1/realtime?call_id=…``: a server's WebSocket on a live WebRTC call (OpenAI's
    sideband control): the call's events (no audio), and client events into the call,
    counted against its limits. It holds a connection slot of its own (the caller's);
    ends (1000) when the call does."""
    subprotocol = "realtime" if "realtime" in creds.offered else creds.gateway_entry
    ws = await accept_client(request, s, limits, subprotocol)
    queue = call.watch()

    async def pump() -> None:
        while (frame := await queue.get()) is not None:
            await ws.send_str(frame)
        await ws.close(code=1000, message=b"the call ended")

    writer = asyncio.create_task(pump(), name=f"sideband-{call.id}")
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            verdict = await call.handle(msg.data)
            if verdict:
                await ws.close(code=verdict, message=CLOSE_REASONS[verdict].encode())
                break
    finally:
        call.unwatch(queue)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await ws.close()
    return ws


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/realtime", realtime)
    app.router.add_get("/api/v1/realtime/session", realtime)  # Inworld's address
    app.router.add_post("/v1/realtime/client_secrets", client_secrets)
    app.router.add_post("/v1/realtime/sessions", beta_sessions)
