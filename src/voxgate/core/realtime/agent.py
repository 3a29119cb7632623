"""The voice agent behind ``ws /v1/realtime``: a voice session bound to OpenAI Realtime JSON.

A transport calls :meth:`RealtimeAgent.start` once (``session.created``), then
:meth:`RealtimeAgent.handle` for each client frame. The frame is parsed by
:class:`~voxgate.protocols.realtime.protocol.RealtimeProtocol` into a typed client event
and becomes a command of the :class:`~voxgate.core.realtime.voice.VoiceSession`; the
session's canonical events are rendered back by the same protocol (GA or beta names).
Every refused event is answered with an ``error`` event naming the field and the
client's ``event_id``; the session goes on and nothing already in the conversation
changes.

The spoken answer leaves through an audio sink: over a WebSocket it is
``response.output_audio.delta`` events (the client plays them and truncates), while a
WebRTC call passes a sink that plays into its track.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from voxgate.clock import IdFactory
from voxgate.core.parsing import parse
from voxgate.core.realtime.conversation import Conversation
from voxgate.core.realtime.deps import AgentDeps, is_openai_stt_model
from voxgate.core.realtime.input import MAX_INPUT_BUFFER_SECONDS
from voxgate.core.realtime.ports import AudioSink, OutputAudio, Playing
from voxgate.core.realtime.voice import VoiceSession
from voxgate.core.relay import RelaySession
from voxgate.engines.base import EngineError
from voxgate.protocols.realtime import events as ev
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.protocol import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    OutputAudioClear,
    RealtimeProtocol,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
)
from voxgate.protocols.realtime.session import AudioSpec, SessionConfig

__all__ = [
    "MAX_INPUT_BUFFER_SECONDS",
    "AgentDeps",
    "RealtimeAgent",
    "SocketSink",
    "dispatch",
    "is_openai_stt_model",
]

Send = Callable[[str], Awaitable[None]]


class SocketSink:
    """The spoken answer as ``response.output_audio.delta`` events on the client's socket.

    The client plays the audio, so the server cannot know what was heard:
    :meth:`played_ms` is ``None`` and the client truncates the item itself."""

    format: AudioSpec | None = None
    playing: Playing | None = None

    def __init__(self, protocol: RealtimeProtocol, send: Send) -> None:
        self._protocol = protocol
        self._send = send

    async def write(self, audio: OutputAudio) -> None:
        await self._send(
            self._protocol.audio_delta(
                response_id=audio.response_id,
                item_id=audio.item_id,
                output_index=audio.output_index,
                audio=audio.audio,
            )
        )

    def finish(self, response_id: str) -> None:
        pass

    def clear(self) -> None:
        pass

    def played_ms(self, item_id: str) -> float | None:
        return None

    def detach(self) -> None:
        self._send = _gone


async def dispatch(session: VoiceSession, event: ClientEvent) -> None:
    """Carry out one parsed client event; raises :class:`ClientEventError` when refused."""
    if isinstance(event, AudioAppend):
        await session.append(event.audio)
    elif isinstance(event, SessionUpdate):
        await session.update(event.session)
    elif isinstance(event, AudioCommit):
        await session.commit(event.event_id)
    elif isinstance(event, AudioClear):
        await session.clear(event.event_id)
    elif isinstance(event, OutputAudioClear):
        await session.clear_output()
    elif isinstance(event, ItemCreate):
        await session.create_item(event.item, event.previous_item_id)
    elif isinstance(event, ItemRetrieve):
        await session.retrieve(event.item_id)
    elif isinstance(event, ItemTruncate):
        await session.truncate(event.item_id, event.content_index, event.audio_end_ms)
    elif isinstance(event, ItemDelete):
        await session.delete(event.item_id)
    elif isinstance(event, ResponseCreate):
        await session.respond(event.params)
    elif isinstance(event, ResponseCancel):
        session.cancel(event.response_id)


class RealtimeAgent:
    """One OpenAI Realtime session over JSON frames (a WebSocket, a data channel)."""

    def __init__(
        self,
        *,
        protocol: RealtimeProtocol,
        config: SessionConfig,
        deps: AgentDeps,
        counters: RelaySession,
        send: Send,
        ids: IdFactory,
        session_id: str,
        expires_at: int,
        sink: AudioSink | None = None,
        input_rate: int | None = None,
    ) -> None:
        """``sink``: where the voice goes (``None``: audio deltas on ``send``)."""
        self.protocol = protocol
        self._send = send
        self._socket_sink = SocketSink(protocol, send) if sink is None else None
        self.session = VoiceSession(
            config=config,
            deps=deps,
            counters=counters,
            emit=self.emit,
            sink=sink or self._socket_sink or SocketSink(protocol, send),
            ids=ids,
            session_id=session_id,
            expires_at=expires_at,
            input_rate=input_rate,
        )

    async def emit(self, event: ev.Event) -> None:
        frame = self.protocol.render(event)
        if frame is not None:
            await self._send(frame)

    async def start(self, *, as_call: bool = False) -> None:
        """Send ``session.created`` (and, for a WebRTC call, ``conversation.created``)."""
        await self.session.start(as_call=as_call)

    @property
    def conversation(self) -> Conversation:
        return self.session.conversation

    @property
    def input_buffer_ms(self) -> float:
        """Milliseconds of audio in the input buffer (not yet committed or dropped)."""
        return self.session.input_buffer_ms

    async def handle(self, data: str | bytes) -> None:
        event_id: str | None = None
        try:
            event = await parse(self.protocol.receive, data)
            event_id = event.event_id
            await dispatch(self.session, event)
        except ClientEventError as exc:
            await self.emit(ev.Error.refusal(exc, event_id))
        except EngineError as exc:
            await self.emit(ev.Error(exc.code, exc.public_message, None, event_id, "server_error"))

    async def close(self) -> None:
        await self.session.close()
        if self._socket_sink is not None:
            self._socket_sink.detach()
        self._send = _gone  # the connection refers to this agent

    def ended(self, reason: str) -> str | None:
        return None  # the Realtime protocol has no goodbye event: the close code says it

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        frame = self.protocol.render(ev.Error.of(code, message))
        assert frame is not None  # every API version has ``error``
        return frame


async def _gone(_frame: str) -> None:
    """The ``send`` of a closed agent: its connection is gone."""
