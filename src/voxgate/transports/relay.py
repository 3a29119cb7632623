"""Driving one relayed session: two pumps, limit timers, and how both sides close.

Each direction is one task that reads a frame and awaits its send before reading the
next, so a slow reader on one side slows the sender on the other: memory per
direction stays within the transport write buffer (``relay.buffer_bytes``) plus the
reader's own bounded queue. Frames are never parsed here; the session object counts
them and reads usage from the few text frames that carry it.

Whatever ends the session (a close from either side, a dropped connection, a limit,
server shutdown) becomes one :class:`Ending`, and :meth:`RelayConnection.run` closes
both sides from it in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from voxgate.core.limits import CLOSE_REASONS, CloseCode, sendable_close_code
from voxgate.core.relay import RelaySession
from voxgate.transports.ws import Channel, Closed

log = logging.getLogger("voxgate.relay")


@dataclass(frozen=True)
class Ending:
    """How a session ends: the close each side gets, and the error to record."""

    client_code: int
    client_reason: str
    upstream_code: int
    upstream_reason: str
    error: str | None = None
    #: The code of the limit that ended the session, if one did.
    limit: int | None = None


def _limit_ending(code: int) -> Ending:
    reason = CLOSE_REASONS[code]
    return Ending(
        client_code=code,
        client_reason=reason,
        upstream_code=CloseCode.NORMAL,
        upstream_reason=f"client closed by gateway: {reason}",
        error=reason.replace(" ", "_"),
        limit=code,
    )


def _client_closed(c: Closed) -> Ending:
    if c.clean:
        return Ending(c.code, c.reason, sendable_close_code(c.code, fallback=1000), c.reason)
    if c.code == CloseCode.MESSAGE_TOO_LARGE:
        return _limit_ending(CloseCode.MESSAGE_TOO_LARGE)
    return Ending(
        client_code=c.code,
        client_reason="",
        upstream_code=CloseCode.GOING_AWAY,
        upstream_reason="client went away",
        error="client_disconnected",
    )


#: What aiohttp closes a connection with when a message is over ``max_msg_size``.
MESSAGE_TOO_BIG = 1009


def _upstream_closed(c: Closed) -> Ending:
    if c.clean:
        return Ending(sendable_close_code(c.code, fallback=1000), c.reason, c.code, c.reason)
    if c.code == CloseCode.MESSAGE_TOO_LARGE:  # over relay.max_upstream_message_bytes
        return Ending(
            client_code=CloseCode.INTERNAL_ERROR,
            client_reason="upstream message too large",
            upstream_code=MESSAGE_TOO_BIG,
            upstream_reason="message too large",
            error="upstream_message_too_large",
        )
    return Ending(
        client_code=CloseCode.INTERNAL_ERROR,
        client_reason="upstream connection lost",
        upstream_code=c.code,
        upstream_reason="",
        error="upstream_disconnected",
    )


#: Server shutdown: the client gets 1012 (service restart), so that it reconnects, to a node
#: that is not draining; the upstream sees its client (the gateway) going away.
SHUTDOWN = Ending(
    CloseCode.SERVICE_RESTART,
    "server shutting down",
    CloseCode.GOING_AWAY,
    "server shutting down",
)


class RelayConnection:
    """Relays frames between ``client`` and ``upstream`` until one :class:`Ending`.

    Call :meth:`run` once; it returns after both sides were closed. :meth:`stop`
    may be called from elsewhere (server shutdown) to end the session.
    """

    def __init__(
        self,
        session: RelaySession,
        client: Channel,
        upstream: Channel,
        *,
        close_timeout: float = 5.0,
    ) -> None:
        self.session = session
        self.client = client
        self.upstream = upstream
        self.close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[Ending] = self._loop.create_future()
        self._idle_timer: asyncio.TimerHandle | None = None
        #: Resolved when both sides have been closed.
        self.finished: asyncio.Future[None] = self._loop.create_future()
        #: How the session ended, once :meth:`run` has returned (or was cancelled).
        self.ending: Ending | None = None

    def stop(self, ending: Ending = SHUTDOWN) -> None:
        if not self._done.done():
            self._done.set_result(ending)

    async def run(self) -> Ending:
        loop = self._loop
        s = self.session
        pumps = [
            asyncio.create_task(
                self._pump(
                    self.client,
                    self.upstream,
                    s.client_frame,
                    _client_closed,
                    _upstream_closed(Closed(CloseCode.INTERNAL_ERROR, "", clean=False)),
                ),
                name="relay-client",
            ),
            asyncio.create_task(
                self._pump(
                    self.upstream,
                    self.client,
                    s.upstream_frame,
                    _upstream_closed,
                    _client_closed(Closed(1006, "", clean=False)),
                ),
                name="relay-upstream",
            ),
        ]
        deadline = loop.call_at(
            self.session.session_deadline(), self.stop, _limit_ending(CloseCode.SESSION_TOO_LONG)
        )
        self._idle_timer = loop.call_at(self.session.idle_deadline(), self._check_idle)
        try:
            ending = await self._done
        except asyncio.CancelledError:
            ending = SHUTDOWN
            raise
        finally:
            self.ending = ending
            deadline.cancel()
            self._idle_timer.cancel()
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            try:
                await self._close_both(ending)
            finally:
                if not self.finished.done():
                    self.finished.set_result(None)
        return ending

    def _check_idle(self) -> None:
        deadline = self.session.idle_deadline()
        if self._loop.time() >= deadline:
            self.stop(_limit_ending(CloseCode.IDLE))
        else:
            self._idle_timer = self._loop.call_at(deadline, self._check_idle)

    async def _close_both(self, ending: Ending) -> None:
        async def close(ch: Channel, code: int, reason: str) -> None:
            # An Ending records what was observed (1006 for a dropped connection); the
            # close frame itself may only carry a sendable code.
            code = sendable_close_code(code, fallback=CloseCode.INTERNAL_ERROR)
            try:
                async with asyncio.timeout(self.close_timeout):
                    await ch.close(code, reason)
            except (TimeoutError, ConnectionError, RuntimeError) as exc:
                log.debug("close did not complete: %s", type(exc).__name__)

        await asyncio.gather(
            close(self.client, ending.client_code, ending.client_reason),
            close(self.upstream, ending.upstream_code, ending.upstream_reason),
        )

    async def _pump(
        self,
        src: Channel,
        dst: Channel,
        account: Callable[[float, str | bytes], int],
        on_closed: Callable[[Closed], Ending],
        on_broken: Ending,
    ) -> None:
        """Relay ``src`` → ``dst`` until ``src`` closes or ``account`` returns a close code.

        ``account`` sees each frame first; a non-zero result is the code of the limit
        that ends the session, and that frame is not relayed.
        """
        receive, send_text, send_bytes = src.receive, dst.send_text, dst.send_bytes
        time = self._loop.time
        try:
            while True:
                data = await receive()
                if isinstance(data, Closed):
                    self.stop(on_closed(data))
                    return
                verdict = account(time(), data)
                if verdict:
                    self.stop(_limit_ending(verdict))
                    return
                if isinstance(data, str):
                    await send_text(data)
                else:
                    await send_bytes(data)
        except ConnectionError:  # writing to the other side failed: it is gone
            self.stop(on_broken)
        except Exception:
            log.exception("relay pump failed")
            self.stop(_internal_error())


def _internal_error() -> Ending:
    return Ending(
        CloseCode.INTERNAL_ERROR,
        "internal error",
        CloseCode.GOING_AWAY,
        "gateway error",
        error="internal_error",
    )
