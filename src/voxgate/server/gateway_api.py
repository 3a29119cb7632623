"""What a gateway is doing, for its dashboard (token protected, like the logs API).

``GET /v1/{account}/{gateway}/sessions``: the gateway's live sessions (relay, speech,
realtime, call agents) with their provider, duration and bytes, plus media-server counts.
``GET /v1/{account}/{gateway}/config``: the providers, engines (with TTS voices), language
models, media apps and this gateway's limits: names and addresses, never a secret.
"""

from __future__ import annotations

from dataclasses import asdict
from urllib.parse import urlsplit

import orjson
from aiohttp import web

from voxgate import __version__
from voxgate.engines.base import EngineError
from voxgate.errors import StateUnavailable
from voxgate.server.auth import request_gateway
from voxgate.server.services import SERVICES, Services, json_response
from voxgate.server.speech_service import cloud_tts


async def list_sessions(request: web.Request) -> web.Response:
    """This node's live sessions as they are now, and every other node's as its last
    registry renewal saw them (each row names its ``node``). When the shared state
    cannot be read, this node's alone, with ``"state": "unavailable"``."""
    gw = request_gateway(request)
    s = request.app[SERVICES]
    now = s.clock.wall()
    scope = f"{gw.account}/{gw.name}"
    rows: dict[str, dict[str, object]] = {}
    state = "ok"
    try:
        for entry in await s.state.list_sessions(scope):
            row = orjson.loads(entry).get("session")
            if isinstance(row, dict) and isinstance(row.get("id"), str):
                started = row.get("started_at")
                if isinstance(started, int | float):  # as of now, not of the renewal
                    row["duration_seconds"] = round(max(0.0, now - started), 3)
                rows[row["id"]] = row
    except StateUnavailable:
        state = "unavailable"
    for live in s.sessions.values():
        if live.scope == scope:
            rows[live.id] = live.row(now)
    sessions = sorted(rows.values(), key=lambda r: _started(r.get("started_at")))
    media = s.media
    return json_response(
        {
            "sessions": sessions,
            "count": len(sessions),
            "node": s.state.node,
            "state": state,
            "media": {
                "sessions": len(media.sessions),
                "adapters": len(media.adapters),
                "agents": len(media.agents),
            },
        }
    )


def _started(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _address(url: str) -> str:
    """A provider address without user info or query, which may carry keys."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _tts(s: Services, name: str) -> dict[str, object]:
    entry: dict[str, object] = {"name": name, "type": s.engines.type_of(name)}
    provider = s.engines.provider_of(name)
    try:
        engine = cloud_tts(s, name) if provider else s.engines.describe_tts(name)
    except EngineError as exc:
        return {**entry, "available": False, "reason": exc.public_message, "voices": []}
    caps = engine.capabilities
    voices = [{"id": v.id, "name": v.name, "language": v.language} for v in caps.voices]
    return {**entry, "available": True, "local": caps.local, "voices": voices}


async def gateway_config(request: web.Request) -> web.Response:
    gw = request_gateway(request)
    s = request.app[SERVICES]
    sp = s.settings.speech
    loaded = s.engines.loaded()
    stt = [
        {"name": n, "type": s.engines.type_of(n), "local": not s.engines.provider_of(n)}
        for n in s.engines.stt_names()
    ]
    return json_response(
        {
            "version": __version__,
            "gateway": {
                "account": gw.account,
                "name": gw.name,
                "tokens": [t.name for t in gw.tokens],
                "keys": sorted(name for name, key in gw.keys.items() if key.value),
                "limits": asdict(gw.limits),
                "capture_payloads": gw.capture_payloads,
            },
            "providers": [
                {
                    "name": p.name,
                    "url": _address(p.base_url),
                    "key": bool(p.name in gw.keys and gw.keys[p.name].value),
                }
                for p in sorted(s.providers.values(), key=lambda p: p.name)
            ],
            "engines": {
                "default_tts": sp.default_tts,
                "default_stt": sp.default_stt,
                "loaded": loaded,
                "tts": [_tts(s, n) for n in s.engines.tts_names()],
                "stt": stt,
            },
            "llm": [{"name": n, "url": _address(c.base_url)} for n, c in s.settings.llm.items()],
            "realtime": {
                "default_model": s.settings.realtime.default_model,
                "openai_names": s.settings.realtime.openai_names,
            },
            "apps": [{"name": a.name, "open": a.open} for a in s.settings.apps.values()],
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/{account}/{gateway}/sessions", list_sessions)
    app.router.add_get("/v1/{account}/{gateway}/config", gateway_config)
