"""What the realtime routes share: which model runs, the engines of a voice session, and
who may open one. (Route modules are leaves: they import this, never each other.)"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from voxgate.core.realtime.deps import AgentDeps
from voxgate.core.realtime.secrets import ClientSecret
from voxgate.engines.base import EngineError
from voxgate.engines.llm import LanguageModel
from voxgate.engines.vad import make_vad
from voxgate.errors import AuthenticationFailed, BadRequest, NotFound
from voxgate.protocols.nesting import MAX_DEPTH, nesting_error
from voxgate.server.auth import authenticate
from voxgate.server.realtime_models import ModelChoice, choose_model
from voxgate.server.services import Services
from voxgate.server.speech_service import stt_engine, tts_engine
from voxgate.settings import GatewaySettings, TokenSettings
from voxgate.transports.realtime_call import RealtimeCall

#: The live WebRTC calls by id, and the tasks that run them.
CALLS = web.AppKey("voxgate_realtime_calls", dict[str, RealtimeCall])
CALL_TASKS = web.AppKey("voxgate_realtime_call_tasks", set[asyncio.Task[None]])


def json_object(raw: bytes, what: str, *, at: str = "") -> dict[str, Any]:
    """``raw`` as a JSON object, else :class:`BadRequest` naming ``what`` ("the body");
    ``at`` prefixes the field path in the nesting refusal ("session: ")."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest(f"{what} is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest(f"{what} must be a JSON object")
    deep = nesting_error(raw, data)
    if deep is not None:
        raise BadRequest(f"{at}{deep} nests more than {MAX_DEPTH} levels deep")
    return data


def find_call(app: web.Application, call_id: str) -> RealtimeCall:
    """The live call ``call_id``; raises :class:`NotFound`."""
    call = app[CALLS].get(call_id)
    if call is None:
        raise NotFound(f"no live call {call_id!r}")
    return call


def model_choice(s: Services, gw: GatewaySettings, requested: str | None) -> ModelChoice:
    """What runs for the model a client names (see :mod:`voxgate.server.realtime_models`)."""
    return choose_model(requested, realtime=s.settings.realtime, providers=s.providers, gateway=gw)


async def authenticate_realtime(
    s: Services, gw: GatewaySettings, presented: str | None
) -> tuple[TokenSettings | None, ClientSecret | None]:
    """The token (or client secret) ``presented``; raises :class:`AuthenticationFailed`."""
    if presented is not None and presented.startswith("ek_"):
        secret = await s.client_secrets.get(presented, now=s.clock.wall())
        if secret is None:
            raise AuthenticationFailed("client secret unknown or expired: mint a new one")
        token = next((t for t in gw.tokens if t.name == secret.token_name), None)
        return token, secret
    try:
        return authenticate(gw, presented), None
    except AuthenticationFailed:
        s.metrics.handshake_rejections[(401, "auth")] += 1
        raise


def resolve_model(s: Services, gw: GatewaySettings, model: str) -> LanguageModel:
    """The language model the agent runs for ``model`` as the client names it."""
    choice = model_choice(s, gw, model)
    if choice.relay:
        raise EngineError(
            f"{model!r} is an upstream realtime model: connect with ?model={model} to relay it"
        )
    key = gw.keys["openai"].value if "openai" in gw.keys else None
    return s.llms.resolve(choice.run, openai_key=key)


def agent_deps(s: Services, gw: GatewaySettings) -> AgentDeps:
    sp = s.settings.speech
    engines = s.engines

    def engine_key(name: str) -> str | None:
        provider = engines.provider_of(name)
        return gw.keys[provider].value if provider and provider in gw.keys else None

    def vad() -> Any:
        try:
            return make_vad("silero", sample_rate=16000, shared=engines.shared)
        except EngineError:
            return make_vad("webrtc", sample_rate=16000, shared=engines.shared)

    return AgentDeps(
        workers=engines.workers,
        get_tts=lambda name: tts_engine(s, name),
        get_stt=lambda name: stt_engine(s, name),
        make_vad=vad,
        resolve_model=lambda model: resolve_model(s, gw, model),
        tts_names=tuple(engines.tts_names()),
        stt_names=tuple(engines.stt_names()),
        default_tts=sp.default_tts,
        default_stt=sp.default_stt,
        engine_key=engine_key,
        resolve_tts=lambda name: engines.resolve(name, "tts"),
        resolve_stt=lambda name: engines.resolve(name, "stt"),
    )
