"""What every WebSocket endpoint does around a session: connection slots and its record."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from voxgate.core.limits import LIMIT_NAMES, CloseCode
from voxgate.core.relay import RelaySession
from voxgate.errors import BadRequest, LimitExceeded
from voxgate.server.app import Services
from voxgate.settings import GatewaySettings, Limits, TokenSettings
from voxgate.store import write_record
from voxgate.transports.speech import SpeechConnection, SpeechEnding, SpeechSessionLike
from voxgate.transports.ws import GatewayWebSocketResponse

log = logging.getLogger("voxgate.server")


async def acquire_slots(
    s: Services, gw: GatewaySettings, token: TokenSettings | None, limits: Limits, holder: str
) -> list[str]:
    """Take the gateway's connection slot and, for a token with its own limits, the
    token's. Raises :class:`LimitExceeded` (HTTP 429) when either is full."""
    wanted = [(f"conn:{gw.account}/{gw.name}", gw.limits.max_connections)]
    if token is not None and token.limits is not None:
        wanted.append((f"conn:{gw.account}/{gw.name}/token:{token.name}", limits.max_connections))
    taken: list[str] = []
    for key, limit in wanted:
        if not await s.state.acquire_slot(key, holder, limit):
            for k in taken:
                await s.state.release_slot(k, holder)
            s.metrics.limit_rejections["max_connections"] += 1
            s.metrics.handshake_rejections[(429, "max_connections")] += 1
            raise LimitExceeded(f"too many connections (limit {limit})", limit="max_connections")
        taken.append(key)
    return taken


async def run_live(
    s: Services,
    ws: GatewayWebSocketResponse | None,
    conn: SpeechConnection,
    make_session: Callable[[], SpeechSessionLike],
    *,
    first: str | bytes | None = None,
    start: Callable[[], Awaitable[None]] | None = None,
) -> SpeechEnding:
    """Run a speech or realtime session on ``conn``: listed live, metered, limits counted
    (``ws``: the client's WebSocket, if the session's channel is one).

    ``start`` runs first (a protocol's greeting); ``first`` is a client frame already read."""
    counters = conn.counters
    if ws is not None:
        ws.too_large_farewell = lambda: conn.limit_farewell(CloseCode.MESSAGE_TOO_LARGE)
    s.live_speech.add(conn)
    if s.draining.is_set():  # the server began to shut down while this one was set up
        conn.stop()
    s.metrics.speech_opened(counters)
    ending = SpeechEnding(1011, "", error="internal_error")
    try:
        session = make_session()
        if start is not None:
            await start()
        ending = await conn.run(session, first=first)
    finally:
        if ws is not None:
            ws.too_large_farewell = None  # it refers to conn, which refers to ws
        s.live_speech.discard(conn)
        if ending.limit is not None:
            s.metrics.limit_rejections[LIMIT_NAMES[ending.limit]] += 1
        s.metrics.speech_closed(counters, ending.code)
    return ending


async def save_record(
    s: Services,
    session: RelaySession,
    client_code: int | None,
    upstream_code: int | None,
    error: str | None,
) -> None:
    """Write the usage record; shielded so a cancelled handler still leaves its record."""
    record = session.record(
        now=asyncio.get_running_loop().time(),
        wall=s.clock.wall(),
        client_close_code=client_code,
        upstream_close_code=upstream_code,
        error=error,
    )
    task = asyncio.create_task(write_record(s.store, record, session.capture()))
    s.pending_writes.add(task)
    task.add_done_callback(s.pending_writes.discard)
    try:
        await asyncio.shield(task)
    except Exception:
        log.exception("usage record for %s not saved", record.session_id)


async def accept_client(
    request: web.Request, s: Services, limits: Limits, subprotocol: str | None
) -> GatewayWebSocketResponse:
    """Complete the client's upgrade, answering ``subprotocol`` when it offered any."""
    ws = GatewayWebSocketResponse(
        protocols=(subprotocol,) if subprotocol else (),
        autoclose=False,
        autoping=True,
        heartbeat=limits.heartbeat_seconds,
        # aiohttp refuses a message whose size is >= max_msg_size; ours is the largest allowed
        max_msg_size=limits.max_message_bytes + 1,
        compress=False,
        timeout=s.settings.server.shutdown_timeout_seconds,
    )
    await ws.prepare(request)
    if request.transport is not None:
        request.transport.set_write_buffer_limits(high=s.settings.relay.buffer_bytes)
    return ws


class UpgradeRequired(BadRequest):
    status = 426
    code = "upgrade_required"

    def __init__(self) -> None:
        super().__init__("this address takes WebSocket connections only")
