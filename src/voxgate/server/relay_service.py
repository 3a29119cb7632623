"""Running one relayed session (dial, upgrade, relay, record the ending): what the relay
and realtime routes share (route modules are leaves: they import this, never each other)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from voxgate.core.limits import LIMIT_NAMES
from voxgate.core.relay import RelaySession
from voxgate.errors import UpstreamError
from voxgate.protocols.relay.auth import Credentials, select_subprotocol
from voxgate.protocols.relay.providers import UpstreamRequest
from voxgate.server.live import Live, SessionEnd
from voxgate.server.services import Services
from voxgate.server.sessions import accept_client
from voxgate.settings import Limits
from voxgate.transports.relay import SHUTDOWN, Ending, RelayConnection
from voxgate.transports.ws import AiohttpChannel

log = logging.getLogger("voxgate.relay")


async def run_relay(
    request: web.Request,
    s: Services,
    live: Live,
    upstream_req: UpstreamRequest,
    creds: Credentials,
    limits: Limits,
) -> web.StreamResponse:
    """Dial the upstream, upgrade the client, relay; ``live.end`` says how it ended."""
    session, outcome = live.counters, live.end
    outcome.client_code = None
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
    if s.stopping.is_set():  # the server began to shut down during the dial or upgrade
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


def _closed(s: Services, session: RelaySession, ending: Ending, outcome: SessionEnd) -> None:
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
