"""The app factory: builds every long-lived service from one :class:`Settings`."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from voxgate.clock import Clock, IdFactory, SystemClock, random_id
from voxgate.core.realtime.secrets import ClientSecrets
from voxgate.core.sfu.media import MediaServer
from voxgate.engines.llm import LLMRegistry
from voxgate.engines.registry import EngineRegistry
from voxgate.errors import GatewayRejection, StoreError, UpstreamError
from voxgate.protocols.relay.providers import build_registry
from voxgate.scrub import SecretScrubber
from voxgate.server import (  # route modules import services, never this factory
    agent_routes,
    call_routes,
    cluster_routes,
    deepgram_routes,
    gateway_api,
    logs_api,
    ops,
    page,
    realtime_routes,
    relay_routes,
    sfu_routes,
    speech_routes,
)
from voxgate.server.services import SERVICES, Services, error_response
from voxgate.server.sessions import reap_forever
from voxgate.settings import Settings
from voxgate.state import StateBackend, open_state
from voxgate.store import UsageStore, open_store
from voxgate.transports.upstream import UpstreamConnector

log = logging.getLogger("voxgate.server")


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into a JSON body; internal detail never reaches the peer."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except GatewayRejection as exc:
        status = exc.status
        return error_response(exc.status, exc.code, exc.public_message)
    except StoreError:
        status = 503
        log.warning("usage store unavailable for %s %s", request.method, request.path)
        return error_response(503, "store_unavailable", "the usage store cannot be read now")
    except UpstreamError as exc:
        status = 502
        return error_response(
            502,
            exc.code,
            exc.public_message,
            reason=exc.reason,
            upstream_status=exc.upstream_status,
        )
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        code = "not_found" if exc.status == 404 else "http_error"
        return error_response(exc.status, code, exc.reason)
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error")
    finally:
        log.info(
            "%s %s %s %.1fms",
            request.method,
            request.path,  # the path only: query strings may carry keys
            status,
            (time.perf_counter() - started) * 1000,
        )


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    ids: IdFactory | None = None,
    store: UsageStore | None = None,
    state: StateBackend | None = None,
    engines: EngineRegistry | None = None,
) -> web.Application:
    """Build the aiohttp application. Raises ConfigError for unusable settings."""
    node = node_name(settings)
    state = (
        state
        if state is not None
        else open_state(settings.state.url, node=node, lease_seconds=settings.state.lease_seconds)
    )
    owns_engines = engines is None
    if engines is None:
        engines = EngineRegistry(settings.speech)
    services = Services(
        settings=settings,
        providers=build_registry(settings),
        store=store if store is not None else open_store(settings.store, node=node),
        state=state,
        connector=UpstreamConnector(
            connect_timeout=settings.relay.connect_timeout_seconds,
            max_message_bytes=settings.relay.max_upstream_message_bytes,
            buffer_bytes=settings.relay.buffer_bytes,
            close_timeout=settings.server.shutdown_timeout_seconds,
        ),
        clock=clock or SystemClock(),
        ids=ids or random_id,
        engines=engines,
        owns_engines=owns_engines,
        # the embedded model belongs to the engines: apps sharing them share it
        llms=LLMRegistry(settings.llm, local=engines.local_llm(settings.local_llm)),
        client_secrets=ClientSecrets(state),
        media=MediaServer(clock or SystemClock(), ids or random_id),
        scrubber=SecretScrubber(settings.secret_values()),
    )
    app = web.Application(middlewares=[errors_middleware], client_max_size=1024 * 1024)
    app[SERVICES] = services
    ops.add_routes(app)
    page.add_routes(app)
    logs_api.add_routes(app)
    gateway_api.add_routes(app)
    speech_routes.add_routes(app)
    realtime_routes.add_routes(app)
    call_routes.add_routes(app)
    sfu_routes.add_routes(app)
    cluster_routes.add_routes(app)
    agent_routes.add_routes(app)
    deepgram_routes.add_routes(app)  # before the relay: it serves workers-ai itself
    relay_routes.add_routes(app)  # last: its path patterns are the most general
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app


def node_name(settings: Settings) -> str:
    """``server.node``, else ``HOST:PORT`` (a name unique per process for port 0)."""
    server = settings.server
    if server.node:
        return server.node
    if server.port:
        return f"{server.host}:{server.port}"
    return f"{server.host}-{secrets.token_hex(4)}"


async def drain(app: web.Application, *, seconds: float, cut: asyncio.Event) -> int:
    """Refuse new sessions (``/readyz`` 503 at once) and give live ones ``seconds`` to
    end by themselves, or until ``cut`` is set (a second SIGTERM). Returns how many are
    still live; the shutdown that follows closes those with 1012."""
    s = app[SERVICES]
    s.draining.set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    cutting = asyncio.ensure_future(cut.wait())
    try:
        while s.sessions and not cut.is_set() and (left := deadline - loop.time()) > 0:
            waiters = {live.closed for live in s.sessions.values()} | {cutting}
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        cutting.cancel()
    return len(s.sessions)


async def _startup(app: web.Application) -> None:
    s = app[SERVICES]
    await s.state.start()
    await s.store.open()
    await s.connector.start()
    await s.engines.preload()
    s.media.start()
    s.reaper = asyncio.create_task(reap_forever(s), name="voxgate-reaper")
    s.ready = True


async def _shutdown(app: web.Application) -> None:
    s = app[SERVICES]
    s.ready = False
    s.draining.set()
    s.stopping.set()
    if s.reaper is not None:
        s.reaper.cancel()
        await asyncio.gather(s.reaper, return_exceptions=True)
    for conn in list(s.live):
        conn.stop()
    for speech in list(s.live_speech):
        speech.stop()
    waiters: list[asyncio.Future[None]] = [c.finished for c in s.live]
    waiters += [c.finished for c in s.live_speech]
    if waiters:
        await asyncio.wait(waiters, timeout=s.settings.server.shutdown_timeout_seconds)
    await s.media.close()
    # Usage records are written after a session's close; wait for those too.
    if s.pending_writes:
        await asyncio.wait(
            list(s.pending_writes), timeout=s.settings.server.shutdown_timeout_seconds
        )


async def _cleanup(app: web.Application) -> None:
    s = app[SERVICES]
    await s.connector.close()
    await s.dial.close()
    await s.llms.close()
    if s.owns_engines:
        await s.engines.close()
    # handlers cancelled after on_shutdown (e.g. still dialling an upstream) write
    # their records late: let those writes finish before the store closes
    if s.pending_writes:
        await asyncio.wait(
            list(s.pending_writes), timeout=s.settings.server.shutdown_timeout_seconds
        )
    await s.store.close()
    await s.state.close()
