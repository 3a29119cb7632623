"""What every route may use: :class:`Services` (one per app, built by
:func:`voxgate.server.app.create_app`), the key it is stored under, and JSON answers.

Route modules import this, never each other and never the app factory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from voxgate.clock import Clock, IdFactory, SystemClock, random_id
from voxgate.core.realtime.secrets import ClientSecrets
from voxgate.core.sfu.media import MediaServer
from voxgate.engines.llm import LLMRegistry
from voxgate.engines.registry import EngineRegistry
from voxgate.protocols.adapter import MAX_INGEST_MESSAGE
from voxgate.protocols.relay.providers import Provider
from voxgate.scrub import SecretScrubber
from voxgate.server.live import Live
from voxgate.server.metrics import Metrics
from voxgate.settings import Settings
from voxgate.state import StateBackend
from voxgate.store import UsageStore
from voxgate.transports.dial import WebSocketDialer
from voxgate.transports.relay import RelayConnection
from voxgate.transports.speech import SpeechConnection
from voxgate.transports.upstream import UpstreamConnector


@dataclass
class Services:
    """Everything a request handler may use; one per app."""

    settings: Settings
    providers: dict[str, Provider]
    store: UsageStore
    state: StateBackend
    connector: UpstreamConnector
    clock: Clock
    ids: IdFactory
    engines: EngineRegistry
    llms: LLMRegistry
    #: Kept in ``state``: minted on one node, valid on all.
    client_secrets: ClientSecrets
    #: False when the caller passed the registry in and will close it itself.
    owns_engines: bool = True
    metrics: Metrics = field(default_factory=Metrics)
    live: set[RelayConnection] = field(default_factory=set)
    #: Unified-protocol speech sessions and realtime agent sessions.
    live_speech: set[SpeechConnection] = field(default_factory=set)
    #: Every session of every kind on this node, from :func:`~voxgate.server.sessions.
    #: open_session` until its slots are released, by id.
    sessions: dict[str, Live] = field(default_factory=dict)
    media: MediaServer = field(default_factory=lambda: MediaServer(SystemClock(), random_id))
    dial: WebSocketDialer = field(
        default_factory=lambda: WebSocketDialer(timeout=10.0, max_message_bytes=MAX_INGEST_MESSAGE)
    )
    ready: bool = False
    #: Set as the node begins to drain (the first SIGTERM, or shutdown): new sessions
    #: are refused (503 ``draining``) while live ones may go on.
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set as live sessions are stopped (after the drain): a handler not yet listed in
    #: ``live`` or ``live_speech`` checks it, so it too closes with 1012.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    #: Writes the records of sessions other nodes died with (``sessions.reap_forever``).
    reaper: asyncio.Task[None] | None = None
    #: Usage writes still in flight, awaited at shutdown so no record is lost.
    pending_writes: set[asyncio.Task[None]] = field(default_factory=set)
    #: Removes configured secrets (and auth-scheme values) from captured frames.
    scrubber: SecretScrubber = field(default_factory=lambda: SecretScrubber(()))


SERVICES = web.AppKey("voxgate_services", Services)


def json_response(body: object, *, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str, **extra: object) -> web.Response:
    return json_response({"error": {"code": code, "message": message, **extra}}, status=status)
