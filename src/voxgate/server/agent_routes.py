"""``/v1/apps/{appId}/agents/…``: put a realtime voice agent into a call.

``POST …/agents/new`` ``{listen: [{sessionId, trackName}…], session: {…}}`` → 201
``{agentId, sessionId, trackName}``. ``session`` is a Realtime session config (as in
``session.update``); the bridge's audio formats are fixed to 48 kHz PCM. Participants
pull ``trackName`` from ``sessionId`` like any other track. ``GET …/agents/{id}`` gives
the transcript so far, ``GET …/agents/{id}/events`` its events as they happen (SSE);
``POST …/agents/{id}/close`` ends it (idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

from aiohttp import web

from voxgate.audio import Encoding
from voxgate.core.limits import CloseCode
from voxgate.core.realtime.ports import AudioSink
from voxgate.core.realtime.voice import VoiceSession
from voxgate.core.relay import SessionInfo
from voxgate.core.sfu.agent import RATE, CallAgent, Emit
from voxgate.engines.base import EngineError
from voxgate.errors import GatewayRejection, LimitExceeded, SfuError
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.protocol import RealtimeProtocol
from voxgate.protocols.realtime.session import (
    AudioSpec,
    SessionConfig,
    apply_update,
)
from voxgate.server.realtime_service import agent_deps, model_choice, resolve_model
from voxgate.server.services import Services, json_response
from voxgate.server.sessions import open_session
from voxgate.server.sfu_service import read_json, sfu_handler

MAX_LISTEN = 8
PCM48 = AudioSpec(Encoding.PCM16, RATE)


def _listen(body: dict[str, Any]) -> list[tuple[str, str]]:
    listen = body.get("listen")
    if not isinstance(listen, list) or not 1 <= len(listen) <= MAX_LISTEN:
        raise SfuError(400, "invalid_params", f"listen must list 1 to {MAX_LISTEN} tracks")
    out = []
    for i, t in enumerate(listen):
        if not (
            isinstance(t, dict)
            and isinstance(t.get("sessionId"), str)
            and isinstance(t.get("trackName"), str)
        ):
            raise SfuError(400, "invalid_params", f"listen[{i}] must be {{sessionId, trackName}}")
        out.append((t["sessionId"], t["trackName"]))
    return out


def _config(s: Services, body: dict[str, Any]) -> SessionConfig:
    session = body.get("session", {})
    try:
        config = apply_update(SessionConfig(), session) if session else SessionConfig()
    except ClientEventError as exc:
        raise SfuError(400, "invalid_params", f"{exc.param or 'session'}: {exc}") from exc
    config = replace(config, input_format=PCM48, output_format=PCM48)
    gw = s.settings.speech_gateway()
    named = config.model if isinstance(session, dict) and "model" in session else None
    model = model_choice(s, gw, named).echo
    try:
        resolve_model(s, gw, model)
    except EngineError as exc:
        raise SfuError(400, "invalid_params", exc.public_message) from exc
    return replace(config, model=model)


@sfu_handler
async def new_agent(request: web.Request, s: Services, app_id: str) -> web.Response:
    body = await read_json(request)
    listen = _listen(body)
    config = _config(s, body)
    await s.media.resolve(app_id, listen)  # here or on another node
    gw = s.settings.speech_gateway()
    ran = model_choice(s, gw, config.model)
    agent_id = s.ids("agent").replace("agent_", "")
    info = SessionInfo(
        session_id=agent_id,
        account=gw.account,
        gateway=gw.name,
        provider=ran.provider,
        model=ran.run,
        token_name=None,
        client_address=request.remote,
        kind="agent",
        transport="sfu",
    )
    limits = gw.limits
    loop = asyncio.get_running_loop()
    lifecycle = contextlib.AsyncExitStack()
    try:  # an agent takes a connection slot like every other session
        live = await lifecycle.enter_async_context(
            open_session(s, info, gw=gw, token=None, limits=limits)
        )
    except LimitExceeded as exc:
        raise SfuError(429, "rate_limited", exc.public_message) from None
    except GatewayRejection as exc:
        raise SfuError(exc.status, exc.code, exc.public_message) from None
    counters = live.counters
    protocol = RealtimeProtocol(ids=s.ids, max_audio_bytes=limits.max_audio_chunk_bytes)

    def make_voice(emit: Emit, sink: AudioSink) -> VoiceSession:
        return VoiceSession(
            config=config,
            deps=agent_deps(s, gw),
            counters=counters,
            emit=emit,
            sink=sink,
            ids=s.ids,
            session_id=agent_id,
            expires_at=int(s.clock.wall() + limits.max_session_seconds),
            input_rate=RATE,
        )

    async def closed(agent: CallAgent) -> None:
        s.media.agents.pop(agent.id, None)
        s.media.closed_ids.add(agent.id)
        deadline.cancel()
        await lifecycle.aclose()  # a second close of the stack does nothing

    agent = CallAgent(
        agent_id, app_id, s.media, listen, protocol.render, counters=counters, on_close=closed
    )
    live.end.set(CloseCode.NORMAL, None, None)  # unless it meets its time limit

    def too_long() -> None:  # max_session_seconds: the agent leaves the call
        live.end.set(CloseCode.SESSION_TOO_LONG, None, "session_too_long")
        task = loop.create_task(agent.close())
        s.media.closing_agents.add(task)
        task.add_done_callback(s.media.closing_agents.discard)

    deadline = loop.call_at(counters.session_deadline(), too_long)
    try:
        await agent.start(make_voice)
    except BaseException:
        deadline.cancel()
        live.end.set(CloseCode.INTERNAL_ERROR, None, "internal_error")
        await agent.close()
        await lifecycle.aclose()
        raise
    s.media.agents[agent.id] = agent
    return json_response(
        {"agentId": agent.id, "sessionId": agent.session_id, "trackName": agent.track_name},
        status=201,
    )


def _agent(s: Services, app_id: str, agent_id: str) -> CallAgent:
    agent = s.media.agents.get(agent_id)
    if not isinstance(agent, CallAgent) or agent.app_id != app_id:
        raise SfuError(404, "not_found", f"no agent {agent_id!r}")
    return agent


@sfu_handler
async def get_agent(request: web.Request, s: Services, app_id: str) -> web.Response:
    agent = _agent(s, app_id, request.match_info["agent"])
    return json_response(
        {
            "agentId": agent.id,
            "sessionId": agent.session_id,
            "trackName": agent.track_name,
            "listen": [{"sessionId": sid, "trackName": n} for sid, n in agent.listen],
            "transcript": [{"role": line.role, "text": line.text} for line in agent.transcript],
        }
    )


@sfu_handler
async def agent_events(request: web.Request, s: Services, app_id: str) -> web.StreamResponse:
    """``GET …/agents/{id}/events``: the agent's turn, transcript and response events as
    Server-Sent Events (``data: <Realtime event JSON>``) until it closes; then one
    ``event: close``. Browsers read it with ``EventSource``."""
    agent = _agent(s, app_id, request.match_info["agent"])
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    await response.write(b": voxgate agent events\n\n")
    async for data in agent.watch():
        await response.write(b"data: " + data.encode() + b"\n\n")
    await response.write(b"event: close\ndata: {}\n\n")
    return response


@sfu_handler
async def close_agent(request: web.Request, s: Services, app_id: str) -> web.Response:
    agent_id = request.match_info["agent"]
    agent = s.media.agents.get(agent_id)
    if agent is not None and agent.app_id == app_id:
        await agent.close()
    elif agent_id not in s.media.closed_ids:
        raise SfuError(404, "not_found", f"no agent {agent_id!r}")
    return json_response({"agentId": agent_id, "closed": True})


def add_routes(app: web.Application) -> None:
    base = "/v1/apps/{app}/agents"
    app.router.add_post(base + "/new", new_agent)
    app.router.add_get(base + "/{agent}", get_agent)
    app.router.add_get(base + "/{agent}/events", agent_events)
    app.router.add_post(base + "/{agent}/close", close_agent)
