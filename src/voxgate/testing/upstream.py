"""A scriptable upstream WebSocket server on 127.0.0.1 that records what it receives."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web


@dataclass(frozen=True)
class Handshake:
    path: str
    query_string: str
    headers: dict[str, str]
    subprotocols: tuple[str, ...]


@dataclass
class Connection:
    handshake: Handshake
    ws: web.WebSocketResponse
    received: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    #: WebSocket pings received (seen only when the server runs with ``autoping=False``).
    pings: int = 0


Behaviour = Callable[[Connection], Awaitable[None]]


async def echo(conn: Connection) -> None:
    """Send back every frame as it came, until the client closes."""
    async for msg in conn.ws:
        if msg.type is WSMsgType.TEXT:
            conn.received.append(msg.data)
            await conn.ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            conn.received.append(msg.data)
            await conn.ws.send_bytes(msg.data)
        elif msg.type is WSMsgType.PING:
            conn.pings += 1
            await conn.ws.pong(msg.data)


async def echo_handler(request: web.Request) -> web.WebSocketResponse:
    """An aiohttp handler that sends every frame back as it came (no limits, no record):
    the upstream of benchmarks and of the canary."""
    ws = web.WebSocketResponse(compress=False, max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


class RecordingUpstream:
    """Start with ``async with RecordingUpstream() as up:``; ``up.url`` is its base.

    ``behaviour`` runs for each accepted connection (default: echo, which also counts
    and answers pings when ``autoping=False``). ``reject_status``
    makes every handshake fail with that HTTP status; ``select`` picks the subprotocol
    the server answers (default: the first offered).
    """

    def __init__(
        self,
        behaviour: Behaviour = echo,
        *,
        reject_status: int | None = None,
        select: Callable[[tuple[str, ...]], str | None] | None = None,
        accept_delay: float = 0.0,
        autoping: bool = True,
    ) -> None:
        self.behaviour = behaviour
        self.reject_status = reject_status
        self.select = select or (lambda offered: offered[0] if offered else None)
        self.accept_delay = accept_delay
        self.autoping = autoping
        self.connections: list[Connection] = []
        self.handshakes: list[Handshake] = []
        self._new_conn = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RecordingUpstream:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for_connection(self, n: int = 1, within: float = 5.0) -> Connection:
        """Wait until at least ``n`` connections were accepted; return the n-th."""
        async with asyncio.timeout(within), self._new_conn:
            await self._new_conn.wait_for(lambda: len(self.connections) >= n)
        return self.connections[n - 1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        offered = tuple(
            p.strip()
            for v in request.headers.getall("Sec-WebSocket-Protocol", ())
            for p in v.split(",")
            if p.strip()
        )
        hs = Handshake(
            path=request.path,
            query_string=request.raw_path.partition("?")[2],
            headers={k.lower(): v for k, v in request.headers.items()},
            subprotocols=offered,
        )
        self.handshakes.append(hs)
        if self.accept_delay:
            await asyncio.sleep(self.accept_delay)
        if self.reject_status is not None:
            return web.Response(status=self.reject_status, text="rejected by test upstream")
        chosen = self.select(offered)
        ws = web.WebSocketResponse(
            protocols=(chosen,) if chosen else (), max_msg_size=0, autoping=self.autoping
        )
        await ws.prepare(request)
        conn = Connection(handshake=hs, ws=ws)
        async with self._new_conn:
            self.connections.append(conn)
            self._new_conn.notify_all()
        try:
            await self.behaviour(conn)
        finally:
            if not ws.closed:
                await ws.close()
            conn.close_code = ws.close_code
            conn.close_reason = getattr(ws, "close_reason", None)
            conn.closed.set()
        return ws
