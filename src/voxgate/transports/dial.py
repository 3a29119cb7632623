"""Dialling out for the WebSocket adapters: a :class:`Channel` to a user's endpoint.

The server sends no custom headers (spec/sfu.md): authentication is a token in the URL.
Failures become :class:`DialError` with the spec's item error code.
"""

from __future__ import annotations

import asyncio

import aiohttp

from voxgate.channels import Channel, Dial, DialError
from voxgate.transports.ws import AiohttpChannel

__all__ = ["Dial", "DialError", "WebSocketDialer"]


class WebSocketDialer:
    def __init__(self, *, timeout: float, max_message_bytes: int) -> None:
        self._timeout = timeout
        self._max = max_message_bytes
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str) -> Channel:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(self._timeout):
                ws = await self._session.ws_connect(
                    url,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._timeout),
                    autoclose=False,
                    autoping=True,
                    max_msg_size=self._max,
                    compress=0,
                )
        except TimeoutError as exc:
            raise DialError(
                "websocket_connection_timeout", f"{_where(url)} did not answer in time"
            ) from exc
        except aiohttp.WSServerHandshakeError as exc:
            raise DialError(
                "websocket_handshake_failed", f"{_where(url)} refused the upgrade ({exc.status})"
            ) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise DialError(
                "websocket_handshake_failed", f"{_where(url)} could not be reached"
            ) from exc
        return AiohttpChannel(ws)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _where(url: str) -> str:
    """The endpoint without its query string, which carries the token."""
    return url.split("?", 1)[0]
