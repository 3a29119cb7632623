"""The WebSocket form of :class:`voxgate.channels.Channel`, on aiohttp."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import ClientWebSocketResponse, WebSocketError, WSCloseCode, WSMsgType, web

from voxgate.channels import Channel, Closed
from voxgate.core.limits import CloseCode

__all__ = ["AiohttpChannel", "Channel", "Closed", "GatewayWebSocketResponse"]


def gateway_close_code(code: int) -> int:
    """aiohttp's 1009 (message too big) is the gateway's documented 4002."""
    return CloseCode.MESSAGE_TOO_LARGE if code == WSCloseCode.MESSAGE_TOO_BIG else code


class GatewayWebSocketResponse(web.WebSocketResponse):
    """aiohttp's server WebSocket, closing oversize messages with 4002 instead of 1009.

    aiohttp's reader rejects a frame over ``max_msg_size`` from its header alone (the
    payload is never buffered) and closes with 1009 from inside ``receive()``; the
    gateway's documented code for that is 4002. ``test_relay_limits`` fails if an
    aiohttp upgrade changes this path.
    """

    #: Frames to send before closing for an oversize message (the speech protocol's
    #: ``error`` and ``session_ended``); set by endpoints whose protocol has them.
    too_large_farewell: Callable[[], Sequence[str]] | None = None

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if gateway_close_code(code) != code:
            code, message = gateway_close_code(code), b"message too large"
            if self.too_large_farewell is not None and not self.closed:
                farewell, self.too_large_farewell = self.too_large_farewell(), None
                with contextlib.suppress(ConnectionError, RuntimeError):
                    for frame in farewell:
                        await self.send_str(frame)
        return await super().close(code=code, message=message, drain=drain)


def close_reason_bytes(reason: str) -> bytes:
    """A close reason cut to the 123 bytes a close frame can carry."""
    raw = reason.encode()
    if len(raw) <= 123:
        return raw
    return raw[:123].decode(errors="ignore").encode()


class AiohttpChannel:
    """A :class:`Channel` over an aiohttp server or client WebSocket.

    The WebSocket must have been made with ``autoclose=False`` so that close frames
    reach the caller with their code.
    """

    __slots__ = ("_ws", "send_bytes", "send_text")

    def __init__(self, ws: web.WebSocketResponse | ClientWebSocketResponse) -> None:
        self._ws = ws
        self.send_text: Any = ws.send_str
        self.send_bytes: Any = ws.send_bytes

    async def receive(self) -> str | bytes | Closed:
        ws = self._ws
        try:
            msg = await ws.receive()
        except ConnectionError:
            # aiohttp answers a ping from inside receive(); when the peer has just
            # vanished, that write fails ("Cannot write to closing transport")
            return Closed(WSCloseCode.ABNORMAL_CLOSURE, "", clean=False)
        t = msg.type
        if t is WSMsgType.TEXT or t is WSMsgType.BINARY:
            return msg.data  # type: ignore[no-any-return]
        if t is WSMsgType.CLOSE:
            return Closed(int(msg.data), str(msg.extra or ""), clean=True)
        if t is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
            return Closed(gateway_close_code(msg.data.code), "", clean=False)
        return Closed(ws.close_code or WSCloseCode.ABNORMAL_CLOSURE, "", clean=False)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.close(code=code, message=close_reason_bytes(reason))
