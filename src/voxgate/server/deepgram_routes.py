"""Deepgram's live ``listen`` and ``speak`` protocols, served on the local speech engines.

- ``ws /v1/listen?model=nova-3&encoding=linear16&sample_rate=16000…`` and
  ``ws /v1/speak?model=aura-2-thalia-en…``: what Deepgram's SDKs dial when their host is
  voxgate. The gateway is ``server.default_gateway``, as for ``/v1/tts``, ``/v1/stt``.
- ``ws /v1/{account}/{gateway}/workers-ai?model=@cf/deepgram/nova-3…`` (or the model in
  the path, ``…/workers-ai/@cf/deepgram/nova-3``): Cloudflare AI Gateway's address of the
  Workers AI models. Registered ahead of the provider relay's
  ``/v1/{account}/{gateway}/{provider}``, so ``workers-ai`` is served here, not relayed.

A model name resolves to an engine through the registry (``[speech.aliases]``, then
the built-in aliases: nova/flux → ``speech.default_stt``, aura → ``speech.default_tts``),
trying the shorter forms of Deepgram's names (``aura-2-thalia-en`` → ``aura-2``).
Refusals before the upgrade: 404 unknown account/gateway, 426 not a WebSocket, 401 token,
400 a bad query parameter or an unknown model (naming it), 503 an engine that cannot
load, 429 connection limit. The token comes as ``Authorization: Token|Bearer``, the
``voxgate-authorization``/``cf-aig-authorization`` headers, or a ``token, <t>``
subprotocol pair. Then the session is the unified protocol's (``core/speech.py``): the
same limits, close codes and one usage record, ``kind`` ``tts``/``stt``, ``provider``
the engine and ``model`` the name the client asked for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import hdrs, web

from voxgate.core.relay import SessionInfo
from voxgate.core.speech import STTSession, TTSSession
from voxgate.engines.base import EngineError
from voxgate.engines.registry import BUILTIN_ALIASES, EngineRegistry
from voxgate.errors import AuthenticationFailed, BadRequest, GatewayRejection, NotFound
from voxgate.protocols.relay.auth import parse_subprotocols
from voxgate.protocols.speech.deepgram_flux import FluxProtocol
from voxgate.protocols.speech.deepgram_listen import ListenProtocol
from voxgate.protocols.speech.deepgram_live import SpeakProtocol
from voxgate.protocols.speech.deepgram_query import (
    WORKERS_AI_PREFIX,
    ListenOptions,
    SpeakOptions,
    derived_uuid,
    listen_options,
    model_candidates,
    read_handshake,
    speak_options,
)
from voxgate.server.auth import authenticate
from voxgate.server.services import SERVICES, Services
from voxgate.server.sessions import (
    UpgradeRequired,
    accept_client,
    open_session,
    run_live,
)
from voxgate.settings import GatewaySettings, Limits
from voxgate.transports.speech import SpeechConnection
from voxgate.transports.ws import AiohttpChannel

KINDS = ("stt", "tts")


class EngineNotReady(GatewayRejection):
    status = 503
    code = "engine_unavailable"


async def listen(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    return await _serve(request, s, s.settings.speech_gateway(), "stt")


async def listen_flux(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    return await _serve(request, s, s.settings.speech_gateway(), "stt", flux=True)


async def speak(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    return await _serve(request, s, s.settings.speech_gateway(), "tts")


async def workers_ai(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    account, gateway = request.match_info["account"], request.match_info["gateway"]
    gw = s.settings.gateway(account, gateway)
    if gw is None:
        raise NotFound(f"unknown account or gateway {account}/{gateway}")
    model = request.match_info.get("model") or request.query.get("model")
    if not model:
        raise BadRequest("query parameter 'model' is required (e.g. @cf/deepgram/nova-3)")
    return await _serve(request, s, gw, None, model)


def resolve_model(
    engines: EngineRegistry, model: str, kinds: tuple[str, ...]
) -> tuple[str, str] | None:
    """``(kind, engine)`` for a Deepgram or Workers AI model name, or ``None``. Where a name
    answers as both kinds (a configured alias), its built-in kind wins, else STT."""
    for name in model_candidates(model):
        found = [(k, e) for k in kinds if (e := engines.resolve(name, k)) is not None]
        found.sort(key=lambda ke: ke[0] != BUILTIN_ALIASES.get(name, "stt"))
        if found:
            return found[0]
    return None


async def _serve(
    request: web.Request,
    s: Services,
    gw: GatewaySettings,
    kind: str | None,
    model: str | None = None,
    *,
    flux: bool = False,
) -> web.StreamResponse:
    if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
        raise UpgradeRequired()
    offered = parse_subprotocols(request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ()))
    handshake = read_handshake(request.headers, offered)
    try:
        token = authenticate(gw, handshake.token)
    except AuthenticationFailed:
        s.metrics.handshake_rejections[(401, "auth")] += 1
        raise
    if model is None:
        model = request.query.get("model")
    kind, engine = _engine_for(s, kind, model)
    options = listen_options(request.query) if kind == "stt" else speak_options(request.query)
    try:  # load it now: a missing model is an HTTP answer, not a socket that dies
        await (s.engines.stt(engine) if kind == "stt" else s.engines.tts(engine))
    except EngineError as exc:
        raise EngineNotReady(exc.public_message) from None
    limits = token.limits if token is not None and token.limits is not None else gw.limits
    info = SessionInfo(
        session_id=s.ids("sess"),
        account=gw.account,
        gateway=gw.name,
        provider=engine,
        model=model or engine,
        token_name=token.name if token is not None else None,
        client_address=request.remote,
        kind=kind,
    )
    async with open_session(s, info, gw=gw, token=token, limits=limits) as live:
        ws = await accept_client(request, s, limits, handshake.subprotocol)
        conn = SpeechConnection(
            live.counters,
            AiohttpChannel(ws),
            close_timeout=s.settings.server.shutdown_timeout_seconds,
        )
        session: TTSSession | STTSession
        # the name Deepgram itself would report (Workers AI's prefix is the gateway's)
        name = (model or engine).removeprefix(WORKERS_AI_PREFIX)
        if isinstance(options, SpeakOptions):
            session, opening = _speak_session(s, conn, options, name, engine, limits)
        else:
            flux = flux or "flux" in model_candidates(name)
            session, opening = _listen_session(s, conn, options, name, engine, limits, flux)
        ending = await run_live(s, ws, conn, lambda: session, start=opening)
        live.end.set(ending.code, None, ending.error)
        return ws


def _engine_for(s: Services, kind: str | None, model: str | None) -> tuple[str, str]:
    """``(kind, engine)`` serving ``model`` (``None``: the default engine of ``kind``);
    raises :class:`BadRequest` naming the model when no local engine serves it."""
    what = "model" if kind is None else ("listen (STT) model" if kind == "stt" else "speak model")
    if model is None:
        assert kind is not None
        speech = s.engines.settings
        found: tuple[str, str] | None = (
            kind,
            speech.default_stt if kind == "stt" else speech.default_tts,
        )
    else:
        found = resolve_model(s.engines, model, KINDS if kind is None else (kind,))
    if found is None:
        raise BadRequest(
            f"unknown {what} {str(model)[:128]!r}: Deepgram's nova, flux and aura models are "
            "served by the default engines, or name an engine or a [speech.aliases] entry"
        )
    if s.engines.provider_of(found[1]):
        raise BadRequest(
            f"{what} {str(model or found[1])[:128]!r} maps to the cloud engine {found[1]!r}: "
            "this address serves local engines (use /v1/stt or /v1/tts for cloud engines)"
        )
    return found


def _created(s: Services) -> str:
    stamp = datetime.fromtimestamp(s.clock.wall(), UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _guarded(
    conn: SpeechConnection, run: Callable[[], Awaitable[None]], error: Callable[..., str]
) -> Callable[[], Awaitable[None]]:
    """``run`` (the session's opening), ending the session with an error if it fails."""

    async def opening() -> None:
        try:
            await run()
        except EngineError as exc:
            conn.fail(error(exc.code, exc.public_message, retryable=exc.retryable))

    return opening


def _speak_session(
    s: Services,
    conn: SpeechConnection,
    options: SpeakOptions,
    model: str,
    engine: str,
    limits: Limits,
) -> tuple[TTSSession, Callable[[], Awaitable[None]]]:
    protocol = SpeakProtocol(
        model=model,
        config=options.config,
        request_id=derived_uuid("request", conn.counters.info.session_id),
        max_text_chars=limits.max_text_chars,
    )
    session = TTSSession(
        protocol=protocol,
        engine_name=engine,
        get_engine=lambda: s.engines.tts(engine),
        counters=conn.counters,
        send=conn.send,
        workers=s.engines.workers,
        ids=s.ids,
        finish=conn.finish,
    )
    return session, _guarded(conn, lambda: session.handle_event(protocol.opening()), session.error)


def _listen_session(
    s: Services,
    conn: SpeechConnection,
    options: ListenOptions,
    model: str,
    engine: str,
    limits: Limits,
    flux: bool,
) -> tuple[STTSession, Callable[[], Awaitable[None]]]:
    request_id = derived_uuid("request", conn.counters.info.session_id)
    protocol: ListenProtocol | FluxProtocol
    if flux:
        protocol = FluxProtocol(
            options=options, request_id=request_id, max_audio_bytes=limits.max_audio_chunk_bytes
        )
    else:
        protocol = ListenProtocol(
            options=options,
            model=model,
            request_id=request_id,
            created=_created(s),
            max_audio_bytes=limits.max_audio_chunk_bytes,
        )
    session = STTSession(
        protocol=protocol,
        get_engine=lambda: s.engines.stt(engine),
        counters=conn.counters,
        send=conn.send,
        workers=s.engines.workers,
        ids=s.ids,
        fail=conn.fail,
        finish=conn.finish,
    )
    return session, _guarded(conn, lambda: session.handle_event(protocol.opening()), session.error)


def add_routes(app: web.Application) -> None:
    """Register before the relay's routes: ``workers-ai`` would match its ``{provider}``."""
    app.router.add_get("/v1/listen", listen)
    app.router.add_get("/v2/listen", listen_flux)
    app.router.add_get("/v1/speak", speak)
    app.router.add_get("/v1/{account}/{gateway}/workers-ai", workers_ai)
    app.router.add_get("/v1/{account}/{gateway}/workers-ai/{model:.+}", workers_ai)
