"""Dialling upstream WebSockets, with third-party errors mapped to :class:`UpstreamError`."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from yarl import URL

from voxgate.errors import UpstreamError
from voxgate.protocols.relay.providers import UpstreamRequest

log = logging.getLogger("voxgate.upstream")


class UpstreamConnector:
    """Owns the one aiohttp client session used for every upstream connection.

    Call :meth:`start` inside the running loop before :meth:`connect`, and
    :meth:`close` at shutdown.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        max_message_bytes: int,
        buffer_bytes: int,
        close_timeout: float = 5.0,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.max_message_bytes = max_message_bytes
        self.buffer_bytes = buffer_bytes
        self.close_timeout = close_timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False),
            # One client's upstream cookies must never reach another client's upstream.
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def connect(
        self, req: UpstreamRequest, *, heartbeat: float | None
    ) -> aiohttp.ClientWebSocketResponse:
        """Open the upstream WebSocket or raise :class:`UpstreamError`."""
        if self._session is None:
            raise RuntimeError("UpstreamConnector.start() was not called")
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await self._session.ws_connect(
                    URL(req.url, encoded=True),  # the query passes exactly as the client sent it
                    headers=list(req.headers),
                    protocols=req.subprotocols,
                    autoclose=False,
                    autoping=True,
                    heartbeat=heartbeat,
                    max_msg_size=self.max_message_bytes,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self.close_timeout),
                    compress=0,
                )
        except TimeoutError:
            raise UpstreamError(
                f"upstream {req.redacted_url()} did not answer in {self.connect_timeout:g}s",
                reason="timeout",
                public_message="upstream connection timed out",
            ) from None
        except aiohttp.WSServerHandshakeError as exc:
            raise UpstreamError(
                f"upstream {req.redacted_url()} refused the handshake: {exc.status}",
                reason="handshake_rejected",
                upstream_status=exc.status,
                public_message=f"upstream refused the connection with HTTP {exc.status}",
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise UpstreamError(
                f"upstream {req.redacted_url()} unreachable: {type(exc).__name__}",
                reason="unreachable",
                public_message="upstream unreachable",
            ) from None
        _bound_write_buffer(ws, self.buffer_bytes)
        return ws


def _bound_write_buffer(ws: aiohttp.ClientWebSocketResponse, limit: int) -> None:
    # aiohttp has no public way to reach a client WebSocket's transport; its response
    # object holds the connection. Without this the default 64 KiB high-water mark
    # applies, which is also bounded, just smaller than configured.
    response = getattr(ws, "_response", None)
    conn = getattr(response, "connection", None)
    transport = getattr(conn, "transport", None)
    if isinstance(transport, asyncio.WriteTransport):
        transport.set_write_buffer_limits(high=limit)
