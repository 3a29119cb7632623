"""An OpenAI Realtime call over WebRTC: a :class:`CallPeer` bound to a voice session.

The caller's microphone goes straight into the session (48 kHz PCM, no JSON); the
session's voice goes straight to the call's :class:`Playout`, which tells it what was
played. The JSON events travel on the ``oai-events`` data channel, rendered and parsed by
the same :class:`~voxgate.core.realtime.agent.RealtimeAgent` binding as the WebSocket
(without ``response.output_audio.delta``: the audio is on the track), plus
``output_audio_buffer.started``/``.stopped`` from the play-out.

The data channel is a :class:`~voxgate.channels.Channel` here, so the call runs under the
same :class:`~voxgate.transports.speech.SpeechConnection` as every WebSocket session:
limits (message size and rate, idle time — the microphone counts as activity —,
session length), metering and one ending. Sideband WebSockets (``ws /v1/realtime?call_id=``)
get the same events and may send client events; a slow one is cut off, never the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from voxgate.channels import Closed
from voxgate.core.limits import CloseCode
from voxgate.core.realtime.agent import RealtimeAgent
from voxgate.core.relay import RelaySession
from voxgate.protocols.realtime import events as ev
from voxgate.transports.rtc_call import CallPeer
from voxgate.transports.speech import SpeechConnection, SpeechEnding

log = logging.getLogger("voxgate.realtime.call")

#: The microphone audio (20 ms packets) that may wait for the session: 5 s.
MAX_MIC_BACKLOG = 250
#: Client events from the data channel that may wait to be handled.
MAX_EVENT_BACKLOG = 1024
#: Events a sideband socket may have pending before it is cut off.
SIDEBAND_BACKLOG = 512

MakeAgent = Callable[["RealtimeCall"], RealtimeAgent]


class _Events:
    """The ``oai-events`` data channel as a :class:`~voxgate.channels.Channel`."""

    def __init__(self, call: RealtimeCall) -> None:
        self._call = call
        self._queue: asyncio.Queue[str | Closed] = asyncio.Queue(MAX_EVENT_BACKLOG + 1)
        self._ended = False

    def message(self, text: str) -> None:
        if self._ended:
            return
        if self._queue.qsize() >= MAX_EVENT_BACKLOG:  # the session cannot keep up
            self.end(Closed(CloseCode.RATE_LIMITED, "too many events waiting", clean=False))
            return
        self._queue.put_nowait(text)

    def end(self, closed: Closed) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(closed)

    async def receive(self) -> str | bytes | Closed:
        return await self._queue.get()

    async def send_text(self, data: str) -> None:
        self._call.deliver(data)

    async def send_bytes(self, data: bytes) -> None:
        raise ValueError("the events channel carries text")

    async def close(self, code: int, reason: str) -> None:
        await self._call.peer.close()


class RealtimeCall:
    """One call. :meth:`answer` the offer, :meth:`bind` the agent, then run
    ``connection`` with it inside :meth:`running`; :meth:`hangup` ends it from anywhere."""

    def __init__(self, call_id: str, counters: RelaySession, *, close_timeout: float = 5.0) -> None:
        self.id = call_id
        self.counters = counters
        self.peer = CallPeer(
            on_audio=self._heard,
            on_message=lambda text: self._events.message(text),
            on_closed=lambda: self._events.end(Closed(1000, "hung up", clean=True)),
            on_started=lambda rid, _item: self._emit_now(ev.OutputAudioStarted(rid)),
            on_stopped=lambda rid, _item: self._emit_now(ev.OutputAudioStopped(rid)),
        )
        self._events = _Events(self)
        self.connection = SpeechConnection(counters, self._events, close_timeout=close_timeout)
        self.agent: RealtimeAgent | None = None
        #: The client secret the call was placed with (it may hang the call up).
        self.placed_with: str | None = None
        self._mic: asyncio.Queue[bytes] = asyncio.Queue(MAX_MIC_BACKLOG)
        self._mic_dropped = 0
        self._sidebands: set[asyncio.Queue[str | None]] = set()
        self._loop = asyncio.get_running_loop()

    async def answer(self, offer: str) -> str:
        """The SDP answer; raises :class:`~voxgate.errors.SfuError` for a bad offer."""
        return await self.peer.answer(offer)

    def bind(self, agent: RealtimeAgent) -> None:
        """The agent to run (made with :meth:`send` and ``peer.playout`` as its sink)."""
        self.agent = agent

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """While the call's connection runs (``connection.run(agent)``): the microphone
        feeds the session. On the way out sidebands end and the peer is closed."""
        agent = self.agent
        assert agent is not None, "bind an agent first"
        feeder = asyncio.create_task(self._feed(agent), name=f"call-mic-{self.id}")
        try:
            yield
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
            for queue in list(self._sidebands):
                self._tell(queue, None)
            await self.peer.close()

    def hangup(self) -> None:
        self.connection.stop(SpeechEnding(CloseCode.NORMAL, "hung up"))

    # -- audio in ------------------------------------------------------------------------

    def _heard(self, pcm: bytes) -> None:
        self.counters.last_activity = self._loop.time()  # speaking is activity
        try:
            self._mic.put_nowait(pcm)
        except asyncio.QueueFull:
            self._mic_dropped += 1
            if self._mic_dropped == 1:
                log.warning("call %s: the session is behind; dropping microphone audio", self.id)

    async def _feed(self, agent: RealtimeAgent) -> None:
        while True:
            pcm = await self._mic.get()
            while not self._mic.empty() and len(pcm) < 48000 * 2 // 5:  # up to 200 ms
                pcm += self._mic.get_nowait()
            await agent.session.feed_audio(pcm)

    # -- events out ----------------------------------------------------------------------

    async def send(self, frame: str) -> None:
        """The agent's ``send``: one event to the data channel and every sideband."""
        self._send_now(frame)

    def _send_now(self, frame: str) -> None:
        self.counters.upstream_frame(self._loop.time(), frame)
        self.deliver(frame)

    def deliver(self, frame: str) -> None:
        self.peer.send(frame)
        for queue in list(self._sidebands):
            self._tell(queue, frame)

    def _emit_now(self, event: ev.Event) -> None:
        """An event of the play-out (a track callback, on the loop): rendered and sent now."""
        if self.agent is None:
            return
        frame = self.agent.protocol.render(event)
        if frame is not None:
            self._send_now(frame)

    # -- sideband ------------------------------------------------------------------------

    def watch(self) -> asyncio.Queue[str | None]:
        """A sideband's queue of event frames; ``None`` ends it. Call :meth:`unwatch`."""
        queue: asyncio.Queue[str | None] = asyncio.Queue(SIDEBAND_BACKLOG + 1)
        self._sidebands.add(queue)
        return queue

    def unwatch(self, queue: asyncio.Queue[str | None]) -> None:
        self._sidebands.discard(queue)

    def _tell(self, queue: asyncio.Queue[str | None], frame: str | None) -> None:
        if frame is not None and queue.qsize() >= SIDEBAND_BACKLOG:
            frame = None  # too slow: cut off
        if frame is None:
            self._sidebands.discard(queue)
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(frame)

    async def handle(self, frame: str) -> int:
        """A client event from a sideband socket; returns a limit's close code or 0."""
        verdict = self.counters.client_frame(self._loop.time(), frame)
        if verdict == 0 and self.agent is not None:
            await self.agent.handle(frame)
        return verdict
