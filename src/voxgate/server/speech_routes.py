"""``ws /v1/tts/{engine}`` and ``ws /v1/stt/{engine}``: the unified speech protocol.

Aliases ``…/{engine}-websocket-stream``. The gateway is ``server.default_gateway``;
its token comes by header (``voxgate-authorization``, ``cf-aig-authorization`` or
``Authorization: Bearer``) or by a ``voxgate-authorization.<token>`` subprotocol entry.
Unknown engines get 404, a bad token 401, a full gateway 429 — all before the upgrade.

For a cloud engine the first message decides: a unified ``init``/``start`` runs the
unified protocol; anything else is the provider's own protocol, and the session becomes
a relay to that provider (with the stored key), the first message relayed first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import hdrs, web

from voxgate.core.limits import LIMIT_NAMES, CloseCode
from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.core.speech import STTSession, TTSSession
from voxgate.engines.base import SpeechToText, TextToSpeech
from voxgate.errors import NotFound
from voxgate.protocols.relay.auth import bearer, parse_subprotocols, read_credentials
from voxgate.protocols.relay.providers import Provider
from voxgate.protocols.relay.usage import meter_for
from voxgate.protocols.speech.unified import STTProtocol, TTSProtocol
from voxgate.server.app import SERVICES, Services
from voxgate.server.auth import authenticate
from voxgate.server.relay_routes import UpgradeRequired, accept_client
from voxgate.server.sessions import acquire_slots, save_record
from voxgate.settings import Limits, ProviderAuth
from voxgate.transports.speech import SpeechConnection, SpeechEnding
from voxgate.transports.ws import AiohttpChannel

log = logging.getLogger("voxgate.speech")

_SUFFIX = "-websocket-stream"
#: Credentials of a local engine: the gateway token only, no provider key.
_LOCAL = Provider(name="local", base_url="", auth=ProviderAuth())


def _engine_name(request: web.Request) -> str:
    name = request.match_info["engine"]
    return name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name


async def tts(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "tts")


async def stt(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "stt")


async def _serve(request: web.Request, kind: str) -> web.StreamResponse:
    s = request.app[SERVICES]
    name = _engine_name(request)
    names = s.engines.tts_names() if kind == "tts" else s.engines.stt_names()
    if name not in names:
        raise NotFound(f"unknown {kind.upper()} engine {name!r} (engines: {', '.join(names)})")
    if request.headers.get(hdrs.UPGRADE, "").lower() != "websocket":
        raise UpgradeRequired()
    gw = s.settings.speech_gateway()
    provider = s.providers.get(s.engines.provider_of(name)) or _LOCAL
    offered = parse_subprotocols(request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ()))
    creds = read_credentials(provider, request.headers, offered, request.query.keys())
    presented = creds.gateway_token
    auth_header = request.headers.get(hdrs.AUTHORIZATION, "")
    if presented is None and auth_header[:7].lower() == "bearer ":
        presented = bearer(auth_header)
    try:
        token = authenticate(gw, presented)
    except Exception:
        s.metrics.handshake_rejections[(401, "auth")] += 1
        raise
    limits = token.limits if token is not None and token.limits is not None else gw.limits
    info = SessionInfo(
        session_id=s.ids("sess"),
        account=gw.account,
        gateway=gw.name,
        provider=name,
        model=None,
        token_name=token.name if token is not None else None,
        client_address=request.remote,
        kind=kind,
    )
    loop = asyncio.get_running_loop()
    counters = RelaySession(
        info, limits, now=loop.time(), wall=s.clock.wall(), meter=meter_for(None)
    )
    slots = await acquire_slots(s, gw, token, limits, info.session_id)
    ending = SpeechEnding(1011, "", error="internal_error")
    try:
        subprotocol = creds.gateway_entry or (offered[0] if offered else None)
        ws = await accept_client(request, s, limits, subprotocol)
        conn = SpeechConnection(
            counters, AiohttpChannel(ws), close_timeout=s.settings.server.shutdown_timeout_seconds
        )
        ws.too_large_farewell = lambda: conn.limit_farewell(CloseCode.MESSAGE_TOO_LARGE)
        s.live_speech.add(conn)
        s.metrics.speech_opened(counters)
        try:
            ending = await conn.run(_make_session(s, kind, name, counters, conn, limits))
        finally:
            s.live_speech.discard(conn)
            if ending.limit is not None:
                s.metrics.limit_rejections[LIMIT_NAMES[ending.limit]] += 1
            s.metrics.speech_closed(counters, ending.code)
        return ws
    finally:
        for key in slots:
            await s.state.release_slot(key, info.session_id)
        await save_record(s, counters, ending.code, None, ending.error)


def _make_session(
    s: Services,
    kind: str,
    name: str,
    counters: RelaySession,
    conn: SpeechConnection,
    limits: Limits,
) -> TTSSession | STTSession:
    if kind == "tts":
        get_tts: Callable[[], Awaitable[TextToSpeech]] = lambda: s.engines.tts(name)  # noqa: E731
        return TTSSession(
            protocol=TTSProtocol(max_text_chars=limits.max_text_chars),
            engine_name=name,
            get_engine=get_tts,
            counters=counters,
            send=conn.send,
            workers=s.engines.workers,
            ids=s.ids,
        )
    get_stt: Callable[[], Awaitable[SpeechToText]] = lambda: s.engines.stt(name)  # noqa: E731
    return STTSession(
        protocol=STTProtocol(max_audio_bytes=limits.max_audio_chunk_bytes),
        get_engine=get_stt,
        counters=counters,
        send=conn.send,
        workers=s.engines.workers,
        ids=s.ids,
        fail=conn.fail,
    )


def is_unified_first_message(data: str | bytes, kind: str) -> bool:
    """Whether a cloud engine's first client message speaks the unified protocol."""
    if not isinstance(data, str):
        return False
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        return True  # not the provider's either: let the unified protocol name the problem
    return isinstance(msg, dict) and msg.get("type") in (
        ("init", "ping") if kind == "tts" else ("start", "ping")
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/tts/{engine}", tts)
    app.router.add_get("/v1/stt/{engine}", stt)
