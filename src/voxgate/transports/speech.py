"""Driving one unified-protocol speech session over a :class:`Channel`.

One loop reads client frames, applies the session's limits (size, rate, idle, duration)
and hands each frame to the session; the session's own tasks send audio and
transcripts. Whatever ends the session becomes one close code: the client closing,
a limit (an ``error`` event, then ``session_ended``, then the close), a fatal error
(``error``, ``session_ended``, close 1011) or server shutdown (``session_ended``, 1012
"service restart": the client reconnects, to a node that is not draining).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Protocol

from voxgate.audio import AudioFormatError
from voxgate.core.limits import CLOSE_REASONS, CloseCode
from voxgate.core.relay import RelaySession
from voxgate.engines.base import EngineError, EngineRejected, UpstreamEngineError
from voxgate.protocols.speech.unified import MessageError
from voxgate.transports.ws import Channel, Closed

log = logging.getLogger("voxgate.speech")

#: The unified protocol's error code for each limit close.
LIMIT_ERRORS: dict[int, str] = {
    CloseCode.RATE_LIMITED: "rate_limited",
    CloseCode.MESSAGE_TOO_LARGE: "message_too_large",
    CloseCode.SESSION_TOO_LONG: "session_too_long",
    CloseCode.IDLE: "idle_timeout",
}


class SpeechSessionLike(Protocol):
    async def handle(self, data: str | bytes) -> None: ...

    async def close(self) -> None: ...

    def ended(self, reason: str) -> str | None:
        """The goodbye frame of the protocol (``None`` if it has none)."""

    def error(self, code: str, message: str, *, retryable: bool = False) -> str: ...


@dataclass(frozen=True)
class SpeechEnding:
    code: int
    reason: str
    error: str | None = None
    limit: int | None = None
    #: Rendered frames to send before the close (``error``, ``session_ended``).
    farewell: tuple[str, ...] = ()


class SpeechConnection:
    """Runs one session until an ending; call :meth:`run` once, :meth:`stop` from anywhere."""

    def __init__(
        self,
        counters: RelaySession,
        client: Channel,
        *,
        close_timeout: float = 5.0,
    ) -> None:
        self.counters = counters
        self.client = client
        self.close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[SpeechEnding] = self._loop.create_future()
        self.finished: asyncio.Future[None] = self._loop.create_future()
        self.session: SpeechSessionLike | None = None

    async def send(self, frame: str | bytes) -> None:
        """Send one frame to the client, counting it. Never raises for a gone client."""
        self.counters.upstream_frame(self._loop.time(), frame)
        try:
            if isinstance(frame, str):
                await self.client.send_text(frame)
            else:
                await self.client.send_bytes(frame)
        except (ConnectionError, RuntimeError):
            self.stop(SpeechEnding(1006, "", error="client_disconnected"))

    def stop(self, ending: SpeechEnding | None = None) -> None:
        """End the session with ``ending``; without one, as the server shuts down (1012)."""
        if not self._done.done():
            self._done.set_result(
                ending or self._server_ending(CloseCode.SERVICE_RESTART, "shutdown")
            )

    def fail(self, frame: str, *, refused: bool = False) -> None:
        """End the session after a fatal error whose ``error`` frame is ``frame``:
        1011, or — ``refused``: a provider refused the credentials or a limit, which a
        reconnect would only repeat — 1008."""
        self.stop(
            SpeechEnding(
                CloseCode.POLICY_VIOLATION if refused else CloseCode.INTERNAL_ERROR,
                "provider refused" if refused else "engine error",
                error="engine_error",
                farewell=(frame, *self._ended("error")),
            )
        )

    def finish(self) -> None:
        """End the session normally at the protocol's request (a client's close message):
        the protocol's goodbye, if it has one, then close 1000."""
        self.stop(SpeechEnding(CloseCode.NORMAL, "", farewell=self._ended("closed")))

    def _ended(self, reason: str) -> tuple[str, ...]:
        frame = self.session.ended(reason) if self.session is not None else None
        return (frame,) if frame is not None else ()

    def _server_ending(self, code: int, reason: str) -> SpeechEnding:
        return SpeechEnding(code, "server shutting down", error=None, farewell=self._ended(reason))

    def limit_farewell(self, code: int) -> tuple[str, ...]:
        """The frames that precede a close for the limit ``code``."""
        return self._limit(code).farewell

    def _limit(self, code: int) -> SpeechEnding:
        reason = CLOSE_REASONS[code]
        farewell: tuple[str, ...] = ()
        if self.session is not None:
            message = f"{reason}: limit {self._limit_value(code)}"
            farewell = (self.session.error(LIMIT_ERRORS[code], message), *self._ended(reason))
        return SpeechEnding(
            code, reason, error=reason.replace(" ", "_"), limit=code, farewell=farewell
        )

    def _limit_value(self, code: int) -> str:
        lim = self.counters.limits
        values: dict[int, str] = {
            CloseCode.RATE_LIMITED: f"{lim.messages_per_minute} messages per minute",
            CloseCode.MESSAGE_TOO_LARGE: f"{lim.max_message_bytes} bytes per message",
            CloseCode.SESSION_TOO_LONG: f"{lim.max_session_seconds:g} s per session",
            CloseCode.IDLE: f"{lim.idle_seconds:g} s without a message",
        }
        return values[code]

    async def run(
        self, session: SpeechSessionLike, *, first: str | bytes | None = None
    ) -> SpeechEnding:
        """Run ``session``; ``first`` is a client frame already read (and not yet counted)."""
        self.session = session
        loop = self._loop
        reader = asyncio.create_task(self._read(session, first), name="speech-read")
        deadline = loop.call_at(
            self.counters.session_deadline(), lambda: self.stop(self._limit(4003))
        )
        idle = [loop.call_at(self.counters.idle_deadline(), self._check_idle)]
        self._idle = idle
        try:
            ending = await self._done
        finally:
            deadline.cancel()
            idle[0].cancel()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        try:
            await session.close()
        finally:
            await self._close(ending)
            # the session's send points back here: let both go without a full collection
            self.session = None
            if not self.finished.done():
                self.finished.set_result(None)
        return ending

    def _check_idle(self) -> None:
        deadline = self.counters.idle_deadline()
        if self._loop.time() >= deadline:
            self.stop(self._limit(CloseCode.IDLE))
        else:
            self._idle[0] = self._loop.call_at(deadline, self._check_idle)

    async def _read(self, session: SpeechSessionLike, first: str | bytes | None) -> None:
        time = self._loop.time
        try:
            while True:
                data = first if first is not None else await self.client.receive()
                first = None
                if isinstance(data, Closed):
                    if data.code == CloseCode.MESSAGE_TOO_LARGE and not data.clean:
                        # the WebSocket already sent the farewell and closed
                        ending = self._limit(CloseCode.MESSAGE_TOO_LARGE)
                        self.stop(
                            SpeechEnding(ending.code, ending.reason, ending.error, ending.limit)
                        )
                    else:
                        err = None if data.clean else "client_disconnected"
                        self.stop(SpeechEnding(data.code, data.reason, error=err))
                    return
                verdict = self.counters.client_frame(time(), data)
                if verdict:
                    self.stop(self._limit(verdict))
                    return
                await self._dispatch(session, data)
                # frames a client sent back to back are already buffered, and reading
                # them does not yield: let every other session run between two of them
                await asyncio.sleep(0)
        except Exception:
            log.exception("speech session failed")
            self.stop(
                SpeechEnding(
                    CloseCode.INTERNAL_ERROR,
                    "internal error",
                    error="internal_error",
                    farewell=(session.error("internal_error", "internal error"),),
                )
            )

    async def _dispatch(self, session: SpeechSessionLike, data: str | bytes) -> None:
        try:
            await session.handle(data)
        except MessageError as exc:
            await self.send(session.error(exc.code, exc.public_message))
            if exc.fatal:
                self.stop(SpeechEnding(CloseCode.NORMAL, "protocol error", error=exc.code))
        except AudioFormatError as exc:
            await self.send(session.error("invalid_field", exc.public_message))
        except EngineRejected as exc:
            await self.send(session.error(exc.code, exc.public_message))
        except EngineError as exc:
            refused = isinstance(exc, UpstreamEngineError) and exc.refused
            frame = session.error(exc.code, exc.public_message, retryable=exc.retryable)
            self.fail(frame, refused=refused)

    async def _close(self, ending: SpeechEnding) -> None:
        if ending.code == 1006:  # the client is gone: nothing to say
            return
        try:
            async with asyncio.timeout(self.close_timeout):
                for frame in ending.farewell:
                    await self.client.send_text(frame)
                await self.client.close(ending.code, ending.reason)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            log.debug("speech close did not complete: %s", type(exc).__name__)
