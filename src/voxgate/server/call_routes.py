"""OpenAI Realtime over WebRTC: ``POST /v1/realtime/calls`` and ``…/calls/{id}/hangup``.

Two forms of ``POST /v1/realtime/calls[?model=…]``, as OpenAI documents them:

- a raw ``application/sdp`` body (the offer), ``Authorization: Bearer ek_…`` (a client
  secret minted by ``/v1/realtime/client_secrets``: the browser form) or a gateway token;
- ``multipart/form-data`` with the parts ``sdp`` (the offer) and ``session`` (JSON: the
  session object, as in ``session.update``), with a gateway token.

Answer: ``201``, the SDP answer as the body, ``Location: /v1/realtime/calls/{call_id}``.
The call then runs as a realtime session (limits, connection slots, one usage record with
``transport = "webrtc"``, listed in the sessions API) until the caller hangs up, a limit
ends it, ``POST …/hangup`` or the server shuts down. A sideband WebSocket attaches with
``ws /v1/realtime?call_id=…`` (:mod:`voxgate.server.realtime_routes`). Cross-origin
requests are allowed (browsers call this from their own pages, as they call OpenAI).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import BodyPartReader, StreamReader, hdrs, web

from voxgate.core.realtime.agent import RealtimeAgent
from voxgate.core.realtime.secrets import ClientSecret
from voxgate.core.relay import SessionInfo
from voxgate.engines.base import EngineError
from voxgate.errors import BadRequest, GatewayRejection, SfuError
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.protocol import RealtimeProtocol
from voxgate.protocols.realtime.session import SessionConfig, apply_update
from voxgate.protocols.relay.auth import bearer
from voxgate.server.auth import token_from_headers
from voxgate.server.live import Live
from voxgate.server.realtime_service import (
    CALL_TASKS,
    CALLS,
    agent_deps,
    authenticate_realtime,
    find_call,
    json_object,
    model_choice,
    resolve_model,
)
from voxgate.server.services import SERVICES, Services, json_response
from voxgate.server.sessions import open_session, run_live
from voxgate.settings import GatewaySettings
from voxgate.transports.realtime_call import RealtimeCall

log = logging.getLogger("voxgate.realtime.call")

#: The largest SDP offer taken (a browser's is 2–6 KB).
MAX_SDP_BYTES = 64 * 1024
#: The largest ``session`` part of the multipart form.
MAX_SESSION_BYTES = 256 * 1024
CALL_RATE = 48000


class PayloadTooLarge(GatewayRejection):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayRejection):
    status = 415
    code = "unsupported_media_type"


def _presented(request: web.Request) -> str | None:
    return token_from_headers(request.headers, allow_authorization=False) or bearer(
        request.headers.get(hdrs.AUTHORIZATION)
    )


async def _read_limited(source: BodyPartReader | StreamReader, limit: int, what: str) -> bytes:
    data = bytearray()
    read = source.read_chunk if isinstance(source, BodyPartReader) else source.read
    while chunk := await read(16384):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"{what} is larger than {limit} bytes")
    return bytes(data)


async def _read_offer(request: web.Request) -> tuple[str, dict[str, Any] | None]:
    """The SDP offer and the ``session`` object (multipart form only)."""
    kind = request.content_type
    if request.content_length is not None and request.content_length > (
        MAX_SDP_BYTES + MAX_SESSION_BYTES
    ):
        raise PayloadTooLarge("the request body is too large for an SDP offer and a session")
    session: dict[str, Any] | None = None
    if kind == "application/sdp":
        sdp = await _read_limited(request.content, MAX_SDP_BYTES, "the SDP offer")
    elif kind == "multipart/form-data":
        sdp = b""
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("the form's parts must not be multipart themselves")
            if part.name == "sdp":
                sdp = await _read_limited(part, MAX_SDP_BYTES, "the sdp part")
            elif part.name == "session":
                raw = await _read_limited(part, MAX_SESSION_BYTES, "the session part")
                session = json_object(raw, "the session part", at="session: ")
            else:
                await _read_limited(part, MAX_SESSION_BYTES, f"the part {part.name!r}")
        if not sdp:
            raise BadRequest("the form has no sdp part (the SDP offer)")
    else:
        raise UnsupportedMediaType(
            "send the SDP offer as application/sdp, or multipart/form-data with the parts "
            f"sdp and session (got {kind or 'no content type'})"
        )
    try:
        return sdp.decode(), session
    except UnicodeDecodeError:
        raise BadRequest("the SDP offer is not UTF-8 text") from None


def _config(
    s: Services,
    gw: GatewaySettings,
    request: web.Request,
    secret: ClientSecret | None,
    session: dict[str, Any] | None,
) -> tuple[SessionConfig, str, str]:
    """The session config, the model as the client named it and as it runs."""
    config = secret.config if secret is not None else SessionConfig()
    try:
        if session:
            config = apply_update(config, session)
    except ClientEventError as exc:
        where = exc.param or "session"
        if not where.startswith("session"):
            where = f"session.{where}"
        raise BadRequest(f"{where}: {exc.public_message}") from None
    named = request.query.get("model") or (
        config.model if secret is not None or (session and "model" in session) else None
    )
    choice = model_choice(s, gw, named)
    if choice.relay:
        raise BadRequest(
            f"{named!r} is an upstream realtime model: a WebRTC call runs voxgate's agent; "
            "relay that model over the WebSocket (ws /v1/realtime?model=…)"
        )
    try:
        resolve_model(s, gw, choice.echo)
    except EngineError as exc:
        raise BadRequest(f"session.model: {exc.public_message}") from None
    return replace(config, model=choice.echo), choice.provider, choice.run


async def create_call(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    gw = s.settings.speech_gateway()
    token, secret = await authenticate_realtime(s, gw, _presented(request))
    limits = token.limits if token is not None and token.limits is not None else gw.limits
    offer, session = await _read_offer(request)
    config, provider, runs = _config(s, gw, request, secret, session)
    call_id = s.ids("rtc")
    info = SessionInfo(
        session_id=call_id,
        account=gw.account,
        gateway=gw.name,
        provider=provider,
        model=runs,
        token_name=token.name if token is not None else None,
        client_address=request.remote,
        kind="realtime",
        transport="webrtc",
    )
    lifecycle = contextlib.AsyncExitStack()
    live = await lifecycle.enter_async_context(
        open_session(s, info, gw=gw, token=token, limits=limits)
    )
    counters = live.counters
    call = RealtimeCall(call_id, counters, close_timeout=s.settings.server.shutdown_timeout_seconds)
    if secret is not None:
        call.placed_with = secret.value
    agent = RealtimeAgent(
        protocol=RealtimeProtocol(ids=s.ids, max_audio_bytes=limits.max_audio_chunk_bytes),
        config=config,
        deps=agent_deps(s, gw),
        counters=counters,
        send=call.send,
        ids=s.ids,
        session_id=call_id,
        expires_at=int(s.clock.wall() + limits.max_session_seconds),
        sink=call.peer.playout,
        input_rate=CALL_RATE,
    )
    call.bind(agent)
    try:
        answer = await call.answer(offer)
    except BaseException as exc:
        await call.peer.close()
        if isinstance(exc, SfuError):
            live.abandon()  # the caller gets a 400; nothing ran
        await lifecycle.aclose()
        if isinstance(exc, SfuError):
            raise BadRequest(f"sdp: {exc.public_message}") from None
        raise
    calls, tasks = request.app[CALLS], request.app[CALL_TASKS]
    calls[call_id] = call
    task = asyncio.create_task(_serve(s, calls, call, agent, live, lifecycle), name=call_id)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={hdrs.LOCATION: f"/v1/realtime/calls/{call_id}"},
    )


async def _serve(
    s: Services,
    calls: dict[str, RealtimeCall],
    call: RealtimeCall,
    agent: RealtimeAgent,
    live: Live,
    lifecycle: contextlib.AsyncExitStack,
) -> None:
    """Run an answered call to its end; then leave its ``lifecycle`` (slots, record)."""
    try:
        async with call.running():
            start = functools.partial(agent.start, as_call=True)
            ending = await run_live(s, None, call.connection, lambda: agent, start=start)
            live.end.set(ending.code, None, ending.error)
    except Exception:
        log.exception("call %s failed", call.id)
    finally:
        calls.pop(call.id, None)
        await lifecycle.aclose()


async def hangup(request: web.Request) -> web.Response:
    """``POST /v1/realtime/calls/{call_id}/hangup``: end the call (its record is written).

    A gateway token, a live client secret, or the client secret the call was placed with
    even once it has expired (a browser hangs up with the secret it called with)."""
    s = request.app[SERVICES]
    presented = _presented(request)
    call = request.app[CALLS].get(request.match_info["call_id"])
    placed = call.placed_with if call is not None else None
    if presented is None or placed is None or not hmac.compare_digest(presented, placed):
        await authenticate_realtime(s, s.settings.speech_gateway(), presented)
    find_call(request.app, request.match_info["call_id"]).hangup()
    return json_response({})


# -- cross-origin: browsers call these from their own pages ------------------------------

_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, OpenAI-Beta, "
    "OpenAI-Organization, OpenAI-Project, X-Stainless-Lang",
    "Access-Control-Expose-Headers": "Location",
    "Access-Control-Max-Age": "600",
}


@web.middleware
async def cors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """CORS headers on every answer under ``/v1/realtime/calls`` (errors too)."""
    if not request.path.startswith("/v1/realtime/calls"):
        return await handler(request)
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=_CORS)
    response = await handler(request)
    response.headers.update(_CORS)
    return response


async def _stop_calls(app: web.Application) -> None:
    for call in list(app[CALLS].values()):
        call.connection.stop()  # 1012 "service restart", as every session gets
    running: set[asyncio.Task[None]] = app[CALL_TASKS]
    tasks = list(running)
    if tasks:
        await asyncio.wait(tasks, timeout=10)


def add_routes(app: web.Application) -> None:
    app[CALLS] = {}
    app[CALL_TASKS] = set()
    app.middlewares.insert(0, cors)
    app.router.add_post("/v1/realtime/calls", create_call)
    app.router.add_route("OPTIONS", "/v1/realtime/calls", create_call)
    app.router.add_post("/v1/realtime/calls/{call_id}/hangup", hangup)
    app.router.add_route("OPTIONS", "/v1/realtime/calls/{call_id}/hangup", hangup)
    app.on_shutdown.append(_stop_calls)
