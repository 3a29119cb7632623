"""One lifecycle for every session of every kind: :func:`open_session`.

Relay, speech, Deepgram, realtime WebSocket, WebRTC calls and SFU agents all begin and
end here, in this order::

    refuse if draining ─ meter ─ connection slots ─ listed live (this node, and the
    shared registry) ─ [the session runs] ─ unlisted ─ slots released ─ one usage record

What runs in between says how it ended (:attr:`Live.end`), which the record keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from aiohttp import web

from voxgate.core.limits import LIMIT_NAMES, CloseCode
from voxgate.core.records import UsageRecord
from voxgate.core.relay import RelaySession, SessionInfo
from voxgate.errors import BadRequest, Draining, LimitExceeded, StateUnavailable
from voxgate.protocols.relay.capture import Capture
from voxgate.protocols.relay.usage import UsageMeter, meter_for
from voxgate.server.live import Live
from voxgate.server.services import Services
from voxgate.settings import GatewaySettings, Limits, TokenSettings
from voxgate.store import write_record
from voxgate.transports.speech import SpeechConnection, SpeechEnding, SpeechSessionLike
from voxgate.transports.ws import GatewayWebSocketResponse

log = logging.getLogger("voxgate.server")


@contextlib.asynccontextmanager
async def open_session(
    s: Services,
    info: SessionInfo,
    *,
    gw: GatewaySettings,
    token: TokenSettings | None,
    limits: Limits,
    meter: UsageMeter | None = None,
    capture: Capture | None = None,
) -> AsyncIterator[Live]:
    """Begin the session ``info`` describes; on leaving, end it and write its record.

    Raises, before anything is taken: :class:`Draining` (503) on a node shutting down,
    :class:`LimitExceeded` (429) when a connection slot is full, :class:`StateUnavailable`
    (503) when the shared state cannot be reached. Once this yields, the session leaves
    exactly one usage record, whatever happens inside; the caller says how it ended
    with ``live.end.set(...)``. The record is written after the slots are released
    (a reconnecting client finds its slot free), shielded from cancellation."""
    if s.draining.is_set():
        s.metrics.handshake_rejections[(503, "draining")] += 1
        raise Draining("this node is shutting down: connect again (to another node)")
    loop = asyncio.get_running_loop()
    counters = RelaySession(
        info,
        limits,
        now=loop.time(),
        wall=s.clock.wall(),
        meter=meter if meter is not None else meter_for(None),
        capture=capture,
    )
    live = Live(counters, node=s.state.node, wall=s.clock.wall)
    began = False
    try:
        async with hold_slots(s, gw, token, limits, info.session_id):
            try:
                await s.state.put_session(live.scope, live.id, live.describe)
            except StateUnavailable:
                s.metrics.handshake_rejections[(503, "state_unavailable")] += 1
                raise
            s.sessions[live.id] = live
            began = True
            try:
                yield live
            finally:
                del s.sessions[live.id]
                await s.state.remove_session(live.scope, live.id)
    finally:
        if began:
            live.closed.set_result(None)
        if began and live.recorded:
            await save_record(s, live)


async def reap_lost_sessions(s: Services) -> int:
    """Write the usage records of sessions whose node died with them live (their lease
    in the shared state lapsed): each as its node last described it, with ``error:
    "node_lost"`` and no close codes. Every node runs this; the state hands each lost
    session to one of them. Returns how many were written. Raises StateUnavailable."""
    written = 0
    for gw in s.settings.all_gateways():
        for entry in await s.state.reap_sessions(f"{gw.account}/{gw.name}"):
            record = _lost_record(entry)
            if record is None:
                log.error("a lost session's entry could not be read: %r", entry[:500])
                continue
            log.warning(
                "session %s of node %s was lost with its node; its record is written",
                record.session_id,
                record.node,
            )
            await write_record(s.store, record)
            written += 1
    return written


def _lost_record(entry: bytes) -> UsageRecord | None:
    """The record in a registry entry (:meth:`Live.describe`), ``None`` if unreadable."""
    try:
        raw = orjson.loads(entry)["record"]
        known = {f.name for f in dataclasses.fields(UsageRecord)}
        return UsageRecord(**{k: v for k, v in raw.items() if k in known})
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


async def reap_forever(s: Services) -> None:
    """Every ``state.lease_seconds / 3``: :func:`reap_lost_sessions`, whatever happens,
    until cancelled."""
    while True:
        await asyncio.sleep(s.state.lease_seconds / 3)
        try:
            await reap_lost_sessions(s)
        except StateUnavailable:
            pass  # the state server is down: the next round tries again
        except Exception:  # one bad round must not end the loop: records would be lost
            log.exception("reaping lost sessions failed; trying again")


@contextlib.asynccontextmanager
async def hold_slots(
    s: Services, gw: GatewaySettings, token: TokenSettings | None, limits: Limits, holder: str
) -> AsyncIterator[None]:
    """Hold ``holder``'s connection slots (see :func:`acquire_slots`) for the block."""
    slots = await acquire_slots(s, gw, token, limits, holder)
    try:
        yield
    finally:
        for key in slots:
            await s.state.release_slot(key, holder)


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
        try:
            got = await s.state.acquire_slot(key, holder, limit)
        except StateUnavailable:
            got = None
        if not got:
            for k in taken:
                await s.state.release_slot(k, holder)
            if got is None:
                s.metrics.handshake_rejections[(503, "state_unavailable")] += 1
                raise StateUnavailable(
                    "the shared state (connection limits) cannot be reached: try again"
                )
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
    if s.stopping.is_set():  # the server began to shut down while this one was set up
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


async def save_record(s: Services, live: Live) -> None:
    """Write the session's usage record, ended as ``live.end`` says; shielded so a
    cancelled handler still leaves its record."""
    record = live.record(live.end)
    task = asyncio.create_task(write_record(s.store, record, live.counters.capture()))
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
