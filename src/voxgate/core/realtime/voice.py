"""A voice session: the protocol-neutral voice agent that every transport binds.

Commands in (``feed_audio``/``append``, ``commit``, ``clear``, ``update``,
``create_item``, ``retrieve``, ``truncate``, ``delete``, ``respond``, ``cancel``,
``clear_output``), canonical events out (:mod:`voxgate.protocols.realtime.events`, through
``emit``), and the spoken answer out through an
:class:`~voxgate.core.realtime.ports.AudioSink`. A command the session refuses raises
:class:`~voxgate.protocols.realtime.errors.ClientEventError` before it changes anything;
the binding tells the client and the session goes on.

The parts, each the one owner of its state:

- :class:`~voxgate.core.realtime.input.InputPipeline`: the input buffer, resampling,
  VAD and the turn detector (one task);
- :class:`~voxgate.core.realtime.transcriber.Transcriber`: recognition streams and the
  transcripts of user items;
- :class:`~voxgate.core.realtime.controller.ResponseController`: responses and voices;
- the :class:`~voxgate.core.realtime.conversation.Conversation`, which this class changes.

Barge-in: speech that starts while an answer runs cancels it (``turn_detected``) ahead
of queued audio. Where the sink knows what was played (a WebRTC call, a media-server
track), the unplayed audio is dropped and the answer's item is truncated to what was
heard (``conversation.item.truncated``); over a WebSocket the client does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from voxgate.audio import Encoding, to_pcm16
from voxgate.clock import IdFactory
from voxgate.core.realtime.controller import ResponseController
from voxgate.core.realtime.conversation import Conversation
from voxgate.core.realtime.deps import AgentDeps
from voxgate.core.realtime.input import InputPipeline
from voxgate.core.realtime.ports import AudioSink
from voxgate.core.realtime.response import Response, announce_evicted, chat_request
from voxgate.core.realtime.transcriber import Transcriber
from voxgate.core.relay import RelaySession
from voxgate.engines.base import EngineError
from voxgate.engines.llm import LanguageModel, UnknownModel
from voxgate.protocols.chat import ChatMessage, ChatRequest
from voxgate.protocols.realtime import events as ev
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.items import ContentPart, Item
from voxgate.protocols.realtime.protocol import ResponseParams
from voxgate.protocols.realtime.session import SessionConfig, apply_update

log = logging.getLogger("voxgate.realtime")

Emit = Callable[[ev.Event], Awaitable[None]]


class VoiceSession:
    def __init__(
        self,
        *,
        config: SessionConfig,
        deps: AgentDeps,
        counters: RelaySession,
        emit: Emit,
        sink: AudioSink,
        ids: IdFactory,
        session_id: str,
        expires_at: int,
        input_rate: int | None = None,
    ) -> None:
        """``input_rate``: the rate of :meth:`feed_audio`'s PCM when the transport fixes it
        (a WebRTC track: 48 kHz); ``None``: the session's ``audio.input.format``."""
        self.config = config
        self.deps = deps
        self.counters = counters
        self._emit = emit
        self.ids = ids
        self.session_id = session_id
        self.expires_at = expires_at
        self._fixed_rate = input_rate
        self.conversation = Conversation(key=session_id)
        self._tasks: set[asyncio.Task[None]] = set()
        # the parts reach the session through a weak proxy: no part keeps it alive, so a
        # closed session is freed by reference counting, without a garbage collection
        me = weakref.proxy(self)
        self.transcriber = Transcriber(
            deps=deps,
            config=lambda: me.config,
            items=lambda item_id: me.conversation.find(item_id),
            emit=lambda event: me.emit(event),
            spawn=lambda coro: me._spawn(coro),
            on_partial=lambda text: me._heard(text),
        )
        self.input = InputPipeline(
            host=me,
            transcriber=self.transcriber,
            make_vad=deps.make_vad,
            workers=deps.workers,
            counters=counters,
            ids=ids,
            rate=input_rate or config.input_format.rate,
            turn_detection=config.turn_detection,
        )
        self.responses = ResponseController(
            deps=deps,
            config=lambda: me.config,
            conversation=self.conversation,
            transcriber=self.transcriber,
            emit=lambda event: me.emit(event),
            sink=sink,
            ids=ids,
            counters=counters,
            spawn=lambda coro: me._spawn(coro),
            on_start=self.input.disarm_idle,
            on_end=lambda audio_ms: me._answered(audio_ms),
        )
        self._closed = False
        #: The latest partial transcript, and the task evaluating it ahead of the turn.
        self._partial = ""
        self._preparing: asyncio.Task[None] | None = None
        #: The words the preparation under way evaluates (or last evaluated).
        self._prepared = ""
        self._input_running = False

    # -- lifetime ------------------------------------------------------------------------

    async def start(self, *, as_call: bool = False) -> None:
        """Start the input pipeline and loading the engines; emit ``session.created``.

        ``as_call``, for transports whose clients expect OpenAI's WebRTC
        behaviour: ``conversation.created`` after it (OpenAI's WebSocket server does not
        send it), and ``rate_limits.updated`` after every response (else only when the
        messages left this minute run low)."""
        if as_call:
            self.responses.report_limits = "always"
        self._run_input()
        self._spawn(self._warm())
        await self.emit(ev.SessionCreated(self.state()))
        if as_call:
            await self.emit(ev.ConversationCreated("conv_default"))

    def _run_input(self) -> None:
        """Start the input pipeline's task (at start, or at the first input command of a
        session driven without :meth:`start`)."""
        if not self._input_running and not self._closed:
            self._input_running = True
            self._spawn(self.input.run())

    def state(self) -> ev.SessionState:
        c = self.config
        # what is in force: the engine an alias names, the voice a catalogue name maps to
        in_force = replace(
            c,
            tts_model=self.deps.tts_name(c),
            voice=self.responses.voice_of(c.voice) or None,
        )
        return ev.SessionState(
            in_force,
            self.session_id,
            self.expires_at,
            voice=self.responses.voice_name,
            stt=self.deps.default_stt,
        )

    async def _warm(self) -> None:
        try:
            await self.responses.default_voice()
            await self.deps.get_stt(self.deps.stt_name(self.config))
        except EngineError as exc:  # said again, as an error event, when the session needs it
            log.warning("realtime engines not ready: %s", exc)
        await self._warm_model()

    def _heard(self, partial: str) -> None:
        """A partial transcript of the turn being spoken: the turn detector reads it, and
        the model evaluates it ahead of the turn (one preparation at a time, always of
        the latest words), so the final transcript leaves it little to do. Words that
        read as a whole sentence stop the preparation of earlier ones: they are likely
        the turn's, and the turn may come before the next preparation would end."""
        self.input.set_transcript(partial)
        self._partial = partial
        if not partial:
            return
        old = self._preparing
        if old is None or old.done():
            self._preparing = self._spawn(self._prepare())
        elif _whole(partial) and partial != self._prepared:
            old.cancel()
            self._preparing = self._spawn(self._prepare(after=old))

    def _answered(self, audio_ms: float) -> None:
        """A response of the conversation has ended: the input's idle timer starts, and
        the model evaluates the conversation as it now is while its audio plays (the
        next turn then starts from it)."""
        self.input.arm_idle(audio_ms)
        if self._preparing is None or self._preparing.done():
            self._preparing = self._spawn(self._prepare(history=True))

    async def _prepare(
        self, after: asyncio.Task[None] | None = None, *, history: bool = False
    ) -> None:
        """Evaluate the turn to come ahead of it: the conversation (``history``), then
        each latest partial transcript (see :meth:`_heard`), after the preparation it
        replaces (``after``) has stopped."""
        if after is not None:
            await asyncio.gather(after, return_exceptions=True)
        try:
            model = self.deps.resolve_model(self.config.model)
            request = self._chat_request(model, list(self.conversation.items))
            # the words of the turn just taken are in the conversation: not a turn to come
            done = self._prepared = next(
                (m.content or "" for m in reversed(request.messages) if m.role == "user"), ""
            )
            if history:
                await model.warm(request)
            while self._partial and self._partial != done and not self._closed:
                done = self._prepared = self._partial
                request = self._chat_request(model, list(self.conversation.items))
                user = ChatMessage("user", done)
                await model.warm(
                    replace(request, messages=(*request.messages, user)), whole=_whole(done)
                )
        except EngineError as exc:
            log.debug("the model could not prepare the turn: %s", exc)

    async def _warm_model(self) -> None:
        """Let the model prepare the start every request of this session shares (an
        embedded model evaluates the instructions and tools before the first turn)."""
        try:
            model = self.deps.resolve_model(self.config.model)
            await model.warm(self._chat_request(model, []))
        except EngineError as exc:
            log.warning("the model could not prepare the session: %s", exc)

    def _chat_request(self, model: LanguageModel, items: list[Item]) -> ChatRequest:
        """What the model would be asked now with ``items`` (to prepare it ahead)."""
        c = self.config
        return chat_request(
            model,
            c.instructions,
            items,
            c.tools,
            c.tool_choice,
            c.function_choice,
            conversation=self.conversation.key,
        )

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def emit(self, event: ev.Event) -> None:
        if not self._closed:
            await self._emit(event)

    async def close(self) -> None:
        """Cancel what runs, close every stream; the session emits nothing more."""
        for r in list(self.responses.responses.values()):
            r.cancel("client_cancelled")
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.transcriber.close()
        await self.responses.close()
        # drop what points back at the transport, so a closed session is freed at once by
        # reference counting instead of waiting for a full garbage collection
        self._closed = True
        self._emit = _gone

    # -- input audio ---------------------------------------------------------------------

    async def feed_audio(self, pcm: bytes) -> None:
        """PCM16 at the input rate (``input_rate``, else the input format's)."""
        self._run_input()
        await self.input.feed(pcm)

    async def append(self, audio: bytes) -> None:
        """Audio in the session's ``audio.input.format`` (``input_audio_buffer.append``)."""
        fmt = self.config.input_format
        if fmt.encoding is Encoding.PCM16 and len(audio) % 2:
            raise ClientEventError(
                "invalid_value",
                "audio/pcm must be whole 16-bit little-endian samples (an even number of bytes)",
                param="audio",
            )
        self._run_input()
        await self.input.feed(
            audio if fmt.encoding is Encoding.PCM16 else to_pcm16(audio, fmt.encoding)
        )

    async def commit(self, event_id: str | None = None) -> None:
        self._run_input()
        await self.input.commit(event_id)

    async def clear(self, event_id: str | None = None) -> None:
        self._run_input()
        await self.input.clear(event_id)

    @property
    def input_buffer_ms(self) -> float:
        return self.input.buffer_ms

    # -- the input pipeline's host -------------------------------------------------------

    async def barge_in(self) -> None:
        current = self.responses.current
        if current is not None:
            current.cancel("turn_detected")
        await self._cut_playout(current)

    async def committed(self, item_id: str) -> None:
        item = Item(item_id, "message", role="user", content=[ContentPart("input_audio")])
        prev = self.conversation.add(item)
        self.transcriber.expect(item_id)
        await self.emit(ev.InputCommitted(item_id, prev))
        await self.emit(ev.ItemAdded(item, prev))
        await self.emit(ev.ItemDone(item, prev))
        await announce_evicted(self.conversation, self.emit)
        await self.transcriber.finalize(item_id)

    async def turn_ended(self) -> None:
        await self.responses.after_current()  # a cancelled one finishes first
        await self.responses.create()

    # -- the answer being played ---------------------------------------------------------

    async def clear_output(self) -> None:
        """``output_audio_buffer.clear``: stop the answer and drop its unplayed audio."""
        current = self.responses.current
        if current is not None:
            current.cancel("client_cancelled")
        if not await self._cut_playout(current) and current is not None:
            await self.emit(ev.OutputAudioCleared(current.id))

    async def _cut_playout(self, current: Response | None) -> bool:
        """Drop what the sink has not played; where it knows what was played, truncate
        that item to it. Returns whether something was playing."""
        sink = self.responses.sink
        playing = sink.playing
        if playing is None:
            return False
        played = int(sink.played_ms(playing.item_id) or 0.0)
        sink.clear()
        await self.emit(ev.OutputAudioCleared(playing.response_id))
        if playing.item_id in self.conversation:
            with contextlib.suppress(ClientEventError):  # no longer an audio item
                self.conversation.truncate(playing.item_id, 0, played)
                await self.emit(ev.ItemTruncated(playing.item_id, 0, played))
        return True

    # -- the conversation ----------------------------------------------------------------

    async def create_item(self, item: Item, previous_item_id: str | None) -> None:
        if item.type == "message" and item.role == "assistant":
            for part in item.content:
                part.transcript = part.transcript or ""
        audio = self.transcriber.reserve(item)
        prev = self.conversation.add(item, previous_item_id)
        await self.emit(ev.ItemAdded(item, prev))
        await self.emit(ev.ItemDone(item, prev))
        await announce_evicted(self.conversation, self.emit)
        if audio is not None:
            self.transcriber.transcribe(item, audio)

    async def retrieve(self, item_id: str) -> None:
        await self.emit(ev.ItemRetrieved(self.conversation.get(item_id, "retrieve")))

    async def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        self.conversation.truncate(item_id, content_index, audio_end_ms)
        await self.emit(ev.ItemTruncated(item_id, content_index, audio_end_ms))

    async def delete(self, item_id: str) -> None:
        self.conversation.delete(item_id)
        await self.emit(ev.ItemDeleted(item_id))

    # -- responses -----------------------------------------------------------------------

    async def respond(self, params: ResponseParams | None = None) -> None:
        await self.responses.create(params)

    def cancel(self, response_id: str | None) -> None:
        self.responses.cancel(response_id)

    # -- the session config --------------------------------------------------------------

    async def update(self, session: Mapping[str, Any]) -> None:
        """``session.update``: refused whole (nothing changes) when any part is wrong."""
        new = apply_update(self.config, session)
        await self._check(new)
        old, self.config = self.config, new
        if new.turn_detection != old.turn_detection:
            await self.input.set_turn_detection(new.turn_detection)
        if new.input_format != old.input_format and self._fixed_rate is None:
            await self.input.set_rate(new.input_format.rate)
        if self.deps.stt_name(new) != self.deps.stt_name(old):
            self.transcriber.retire()
        if (new.model, new.instructions, new.tools, new.tool_choice) != (
            old.model,
            old.instructions,
            old.tools,
            old.tool_choice,
        ):
            self._spawn(self._warm_model())
        with contextlib.suppress(EngineError):  # said when the session speaks
            await self.responses.default_voice()  # the engine and voice now in force
        await self.emit(ev.SessionUpdated(self.state()))

    async def _check(self, c: SessionConfig) -> None:
        """Refuse a config naming a model, engine or voice that does not exist."""
        d = self.deps
        try:
            d.resolve_model(c.model)
        except (UnknownModel, EngineError) as exc:  # a relayed model: only at connect time
            raise ClientEventError(
                "invalid_value", exc.public_message, param="session.model"
            ) from None
        if d.tts_name(c) not in d.tts_names:
            raise ClientEventError(
                "invalid_value",
                f"unknown TTS engine {c.tts_model!r} (engines: {', '.join(d.tts_names)}, "
                "or a TTS model name of the built-in or [speech.aliases] aliases)",
                param="session.audio.output.model",
            )
        if c.transcription is not None and d.stt_name(c) not in d.stt_names:
            raise ClientEventError(
                "invalid_value",
                f"unknown transcription model {c.transcription.model!r} "
                f"(engines: {', '.join(d.stt_names)})",
                param="session.audio.input.transcription.model",
            )
        if c.voice is not None:
            tts = await d.get_tts(d.tts_name(c))
            voices = [v.id for v in tts.capabilities.voices]
            # a cloud engine's provider knows voices the engine does not list
            if tts.capabilities.local and voices and tts.voice_for(c.voice) not in voices:
                raise ClientEventError(
                    "invalid_value",
                    f"unknown voice {c.voice!r} for {tts.name} (voices: {', '.join(voices)})",
                    param="session.audio.output.voice",
                )


async def _gone(_event: ev.Event) -> None:
    """The ``emit`` of a closed session: its transport is gone."""


def _whole(words: str) -> bool:
    """Whether a partial transcript reads as a whole sentence (recognizers punctuate)."""
    return words.rstrip().endswith((".", "?", "!"))
