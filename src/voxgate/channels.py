"""The message-channel interface that the relay and the media server's adapters are
written against, with no transport behind it.

A :class:`Channel` delivers text frames as ``str``, binary frames as ``bytes``, and the
end of the connection as one :class:`Closed`. After ``Closed`` the caller must not call
``receive`` again. ``voxgate.transports.ws.AiohttpChannel`` is the WebSocket form and
``voxgate.testing.MemoryChannel`` the in-memory twin; a :data:`Dial` opens one to a URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from voxgate.errors import VoxgateError


@dataclass(frozen=True, slots=True)
class Closed:
    code: int
    reason: str
    #: True when the peer sent a close frame; False when the connection dropped or
    #: broke the protocol (then ``code`` is what the connection was closed with).
    clean: bool


class Channel(Protocol):
    async def receive(self) -> str | bytes | Closed: ...

    async def send_text(self, data: str) -> None: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame (or answer the peer's) and wait briefly for the end."""
        ...


#: Opens a channel to a URL; raises :class:`DialError`.
Dial = Callable[[str], Awaitable[Channel]]


class DialError(VoxgateError):
    """``code`` is ``websocket_handshake_failed`` or ``websocket_connection_timeout``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
