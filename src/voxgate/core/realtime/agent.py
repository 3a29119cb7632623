"""The voice agent behind ``/v1/realtime``: one OpenAI Realtime session.

A transport calls :meth:`RealtimeAgent.start` once (``session.created``), then
:meth:`RealtimeAgent.handle` for each client frame. Every refused event is answered
with an ``error`` event naming the field and the client's ``event_id``; the session goes on
and nothing already in the conversation changes.

Input audio, commits and clears travel through one ordered pipeline (a queue and a
task): audio is decoded to PCM16, kept in the input buffer, resampled to 16 kHz, scored
by the VAD and fed to the :class:`~voxgate.core.realtime.turns.TurnDetector` and to one
recognition stream. A turn's end commits the buffer as a user item, asks the recognizer
for its transcript and — with ``create_response`` — starts a :class:`Response`, which
waits for that transcript before it asks the model. Speech that starts while a response
is running cancels it (``turn_detected``) ahead of any queued audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from voxgate.audio import AudioFormat, Encoding, StreamResampler, to_pcm16
from voxgate.clock import IdFactory
from voxgate.core.parsing import parse
from voxgate.core.realtime.conversation import Conversation
from voxgate.core.realtime.response import Response, ResponsePlan, announce_evicted
from voxgate.core.realtime.turns import (
    IdleTimeout,
    State,
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnStarted,
)
from voxgate.core.relay import RelaySession
from voxgate.engines.base import (
    EngineError,
    Finalized,
    RecognitionFailed,
    RecognitionOptions,
    RecognitionStream,
    SpeechToText,
    SynthesisOptions,
    SynthesisStream,
    TextToSpeech,
    Transcript,
    VoiceActivity,
)
from voxgate.engines.llm import LanguageModel, UnknownModel
from voxgate.engines.workers import EngineWorkers
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.items import ContentPart, Item
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
    ResponseParams,
    SessionUpdate,
)
from voxgate.protocols.realtime.session import (
    SessionConfig,
    TurnDetection,
    apply_update,
    check_tool_choice,
    render_session,
)

log = logging.getLogger("voxgate.realtime")

Send = Callable[[str], Awaitable[None]]
VAD_RATE = 16000
#: Transcription model names of OpenAI's (those of the ``openai`` package's session types,
#: and Pipecat's default ``gpt-realtime-whisper``): they mean "the default engine" here.
OPENAI_STT_MODELS = frozenset(
    {
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "gpt-4o-transcribe-latest",
        "gpt-4o-mini-transcribe-2025-12-15",
        "gpt-4o-transcribe-diarize",
        "gpt-transcribe",
        "gpt-live-transcribe",
        "gpt-realtime-whisper",
    }
)


def is_openai_stt_model(model: str) -> bool:
    """An OpenAI transcription model: a known name, or one of their naming pattern (so a
    model OpenAI adds later does not break an unchanged client)."""
    family = model.startswith(("gpt-", "whisper-"))
    return model in OPENAI_STT_MODELS or (family and ("transcribe" in model or "whisper" in model))


#: Appends larger than this are scored by the VAD in a worker, not on the event loop.
INLINE_VAD_BYTES = 16000 * 2
MIN_COMMIT_MS = 100
#: The most audio the input buffer holds: without turn detection more is refused
#: (``input_audio_buffer_full``); with it, a turn that lasts longer ends there.
MAX_INPUT_BUFFER_SECONDS = 300
#: Between turns, audio kept beyond ``prefix_padding_ms`` (a turn starts a little after
#: its first speech frame).
IDLE_KEEP_MS = 1000
#: The most audio of client items that may wait for its transcription in one session.
MAX_PENDING_ITEM_AUDIO = 16 * 2**20


@dataclass(frozen=True)
class AgentDeps:
    """What an agent session uses; built by the server for each session."""

    workers: EngineWorkers
    get_tts: Callable[[str], Awaitable[TextToSpeech]]
    get_stt: Callable[[str], Awaitable[SpeechToText]]
    make_vad: Callable[[], VoiceActivity]
    resolve_model: Callable[[str], LanguageModel]
    tts_names: tuple[str, ...]
    stt_names: tuple[str, ...]
    default_tts: str
    default_stt: str
    #: The stored provider key a cloud engine uses (``None`` for local engines).
    engine_key: Callable[[str], str | None] = lambda _name: None
    #: The TTS engine that serves a name of ``audio.output.model``: an engine, or an alias
    #: (Inworld's ``inworld-tts-1.5-mini``…; ``EngineRegistry.resolve``). ``None``: the
    #: names of ``tts_names`` only.
    resolve_tts: Callable[[str], str | None] | None = None
    #: The same for ``audio.input.transcription.model``: an STT engine or an alias
    #: (Deepgram's ``nova-3``, SLNG's ``kyutai``…).
    resolve_stt: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class _Marker:
    kind: str  # commit | clear | format
    event_id: str | None = None


class _Recognizer:
    """One recognition stream; transcripts come back in commit order."""

    def __init__(self, agent: RealtimeAgent, stream: RecognitionStream) -> None:
        self.agent = agent
        self.stream = stream
        self.pending: deque[str] = deque()
        self.finals: list[str] = []
        #: Set while no committed item waits for its transcript from this stream.
        self.drained = asyncio.Event()
        self.drained.set()
        # held only while it runs: a finished task keeps its frame (self) through its
        # exception, and holding it would make a cycle that outlives the session
        self._reader: asyncio.Task[None] | None = asyncio.create_task(
            self._read(), name="realtime-stt"
        )
        self._reader.add_done_callback(self._reader_done)

    def _reader_done(self, _task: asyncio.Task[None]) -> None:
        self._reader = None
        self.drained.set()  # nothing more will come

    async def finalize(self, item_id: str) -> None:
        self.pending.append(item_id)
        self.drained.clear()
        await self.stream.finalize()

    async def _read(self) -> None:
        a = self.agent
        async for ev in self.stream.events():
            if isinstance(ev, Transcript):
                if ev.is_final:
                    self.finals.append(ev.text)
                a.detector.set_transcript(" ".join([*self.finals, "" if ev.is_final else ev.text]))
            elif isinstance(ev, Finalized):
                self.finals.clear()
                if self.pending:
                    await a.transcribed(self.pending.popleft(), ev.text, ev.audio_duration_seconds)
                if not self.pending:
                    self.drained.set()
            elif isinstance(ev, RecognitionFailed):
                while self.pending:
                    await a.transcription_failed(self.pending.popleft(), ev.error)
                return

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.aclose()
        if self._reader is not None:
            reader = self._reader
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


class RealtimeAgent:
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
    ) -> None:
        self.protocol = protocol
        self.config = config
        self.deps = deps
        self.counters = counters
        self._send = send
        self.ids = ids
        self.session_id = session_id
        self.expires_at = expires_at
        self.conversation = Conversation()
        self.detector = TurnDetector(config.turn_detection or _NO_TURNS, frame_ms=32.0)
        self._vad: VoiceActivity | None = None
        self._recognizer: _Recognizer | None = None
        self._retired: list[_Recognizer] = []
        self._audio: asyncio.Queue[bytes | _Marker] = asyncio.Queue(256)
        self._buffer = bytearray()
        self._buffer_start_ms = 0.0
        self._position_ms = 0.0
        self._vad_pending = b""
        self._resampler = StreamResampler(config.input_format.rate, VAD_RATE)
        self._speech_item: str | None = None
        self._transcripts: dict[str, asyncio.Future[str]] = {}
        self._item_transcription = asyncio.Lock()
        self._pending_item_audio = 0
        self._responses: dict[str, Response] = {}
        self._current: Response | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._voices: dict[tuple[str, str | None, float], SynthesisStream] = {}
        self._voice_name = ""
        #: The TTS engine in use (loaded by ``_default_voice``) and its name.
        self._speaker: TextToSpeech | None = None
        self._speaker_name = ""
        self._spawn(self._run_pipeline())

    # -- the session's lifetime ----------------------------------------------------------

    async def start(self) -> None:
        """Send ``session.created`` and start loading the engines the session will use."""
        self._spawn(self._warm())
        await self._send(self.protocol.event("session.created", session=self._session_json()))

    def _session_json(self) -> dict[str, object]:
        c = self.config
        # what is in force: the engine an alias names, the voice a catalogue name maps to
        in_force = replace(c, tts_model=self._tts_name(c), voice=self._voice_of(c.voice) or None)
        return render_session(
            in_force,
            session_id=self.session_id,
            expires_at=self.expires_at,
            beta=self.protocol.beta,
            voice=self._voice_name,
            stt=self.deps.default_stt,
        )

    async def _warm(self) -> None:
        try:
            await self._default_voice()
            await self.deps.get_stt(self._stt_name(self.config))
        except EngineError as exc:  # said again, as an error event, when the session needs it
            log.warning("realtime engines not ready: %s", exc)

    async def _default_voice(self) -> str:
        """The TTS engine's voice used when none is named (loads the engine once, and
        again when the session changes engines)."""
        name = self._tts_name(self.config)
        if self._speaker is None or self._speaker_name != name:
            tts = await self.deps.get_tts(name)
            self._speaker, self._speaker_name = tts, name
            self._voice_name = tts.voice_for(None)
        return self._voice_name

    def _voice_of(self, requested: str | None) -> str:
        """The voice ``requested`` is spoken with by the engine in use: itself, the
        engine's default for none, or what a name of another catalogue (``alloy``,
        ``Clive``) maps to (``voice_aliases``). Unresolved while the engine is not loaded."""
        if self._speaker is None or self._speaker_name != self._tts_name(self.config):
            return requested or self._voice_name
        return self._speaker.voice_for(requested)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for r in list(self._responses.values()):
            r.cancel("client_cancelled")
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for rec in [*self._retired, *([self._recognizer] if self._recognizer else [])]:
            await rec.aclose()
        for stream in self._voices.values():
            with contextlib.suppress(Exception):
                await stream.aclose()
        self._forget()

    def _forget(self) -> None:
        """Drop what points back at this agent (the recognizer, responses, the
        connection's ``send``), so a closed session is freed at once by reference
        counting instead of waiting for a full garbage collection."""
        self._recognizer = None
        self._retired.clear()
        self._responses.clear()
        self._current = None
        self._voices.clear()
        self._transcripts.clear()
        self._send = _gone

    def ended(self, reason: str) -> str | None:
        return None  # the Realtime protocol has no goodbye event: the close code says it

    def error(self, code: str, message: str, *, retryable: bool = False) -> str:
        kind = "server_error" if code == "internal_error" else "invalid_request_error"
        return self.protocol.error(ClientEventError(code, message, kind=kind))

    # -- client events -------------------------------------------------------------------

    async def handle(self, data: str | bytes) -> None:
        event_id: str | None = None
        try:
            event = await parse(self.protocol.receive, data)
            event_id = event.event_id
            await self._dispatch(event)
        except ClientEventError as exc:
            if exc.event_id is None:
                exc.event_id = event_id
            await self._send(self.protocol.error(exc))
        except EngineError as exc:
            err = ClientEventError(
                exc.code, exc.public_message, event_id=event_id, kind="server_error"
            )
            await self._send(self.protocol.error(err))

    async def _dispatch(self, ev: ClientEvent) -> None:
        p = self.protocol
        if isinstance(ev, AudioAppend):
            await self._append(ev)
        elif isinstance(ev, SessionUpdate):
            await self._update(ev)
        elif isinstance(ev, AudioCommit):
            await self._audio.put(_Marker("commit", ev.event_id))
        elif isinstance(ev, AudioClear):
            await self._audio.put(_Marker("clear", ev.event_id))
        elif isinstance(ev, OutputAudioClear):
            current = self._current
            if current is not None:  # else no answer is queued: nothing to clear
                current.cancel("client_cancelled")
                await self._send(p.event("output_audio_buffer.cleared", response_id=current.id))
        elif isinstance(ev, ItemCreate):
            await self._create_item(ev)
        elif isinstance(ev, ItemRetrieve):
            item = self.conversation.get(ev.item_id, "retrieve")
            await self._send(p.event("conversation.item.retrieved", item=p.item(item)))
        elif isinstance(ev, ItemTruncate):
            self.conversation.truncate(ev.item_id, ev.content_index, ev.audio_end_ms)
            await self._send(
                p.event(
                    "conversation.item.truncated",
                    item_id=ev.item_id,
                    content_index=ev.content_index,
                    audio_end_ms=ev.audio_end_ms,
                )
            )
        elif isinstance(ev, ItemDelete):
            self.conversation.delete(ev.item_id)
            await self._send(p.event("conversation.item.deleted", item_id=ev.item_id))
        elif isinstance(ev, ResponseCreate):
            await self._create_response(ev.params)
        elif isinstance(ev, ResponseCancel):
            self._cancel(ev.response_id)

    async def _append(self, ev: AudioAppend) -> None:
        fmt = self.config.input_format
        if fmt.encoding is Encoding.PCM16 and len(ev.audio) % 2:
            raise ClientEventError(
                "invalid_value",
                "audio/pcm must be whole 16-bit little-endian samples (an even number of bytes)",
                param="audio",
            )
        pcm = ev.audio if fmt.encoding is Encoding.PCM16 else to_pcm16(ev.audio, fmt.encoding)
        if pcm:
            await self._audio.put(pcm)

    async def _update(self, ev: SessionUpdate) -> None:
        new = apply_update(self.config, ev.session)
        await self._check(new)
        old, self.config = self.config, new
        if new.turn_detection != old.turn_detection:
            self.detector.reconfigure(new.turn_detection or _NO_TURNS)
        if new.input_format != old.input_format:
            await self._audio.put(_Marker("format"))
        if self._stt_name(new) != self._stt_name(old) and self._recognizer is not None:
            self._retire(self._recognizer)
            self._recognizer = None
        with contextlib.suppress(EngineError):  # said when the session speaks
            await self._default_voice()  # the engine and voice now in force, for the echo
        await self._send(self.protocol.event("session.updated", session=self._session_json()))

    async def _check(self, c: SessionConfig) -> None:
        """Refuse a config naming a model, engine or voice that does not exist."""
        d = self.deps
        try:
            d.resolve_model(c.model)
        except UnknownModel as exc:
            raise ClientEventError(
                "invalid_value", exc.public_message, param="session.model"
            ) from None
        except EngineError as exc:  # a relayed realtime model: only at connect time
            raise ClientEventError(
                "invalid_value", exc.public_message, param="session.model"
            ) from None
        if self._tts_name(c) not in d.tts_names:
            raise ClientEventError(
                "invalid_value",
                f"unknown TTS engine {c.tts_model!r} (engines: {', '.join(d.tts_names)}, "
                "or a TTS model name of the built-in or [speech.aliases] aliases)",
                param="session.audio.output.model",
            )
        if c.transcription is not None and self._stt_name(c) not in d.stt_names:
            raise ClientEventError(
                "invalid_value",
                f"unknown transcription model {c.transcription.model!r} "
                f"(engines: {', '.join(d.stt_names)})",
                param="session.audio.input.transcription.model",
            )
        if c.voice is not None:
            tts = await d.get_tts(self._tts_name(c))
            voices = [v.id for v in tts.capabilities.voices]
            # a cloud engine's provider knows voices the engine does not list
            if tts.capabilities.local and voices and tts.voice_for(c.voice) not in voices:
                raise ClientEventError(
                    "invalid_value",
                    f"unknown voice {c.voice!r} for {tts.name} (voices: {', '.join(voices)})",
                    param="session.audio.output.voice",
                )

    def _retire(self, rec: _Recognizer) -> None:
        """A recognizer the session no longer feeds: it is closed once the items
        committed to it have their transcripts (switching engines back and forth must
        not pile up open streams)."""
        self._retired.append(rec)

        async def close_when_drained() -> None:
            await rec.drained.wait()
            await rec.aclose()
            self._retired.remove(rec)

        self._spawn(close_when_drained())

    def _tts_name(self, c: SessionConfig) -> str:
        """The TTS engine that speaks for ``c`` (a name that resolves to none is returned
        as it is, for ``_check`` to refuse)."""
        name = c.tts_model or self.deps.default_tts
        resolve = self.deps.resolve_tts
        return (resolve(name) if resolve is not None else None) or name

    def _stt_name(self, c: SessionConfig) -> str:
        """The STT engine that transcribes for ``c`` (returned as it is when it resolves to
        none, for ``_check`` to refuse)."""
        model = c.transcription.model if c.transcription is not None else None
        if model is None or is_openai_stt_model(model):
            return self.deps.default_stt
        resolve = self.deps.resolve_stt
        return (resolve(model) if resolve is not None else None) or model

    async def _create_item(self, ev: ItemCreate) -> None:
        item = ev.item
        if item.type == "message" and item.role == "assistant":
            for part in item.content:
                part.transcript = part.transcript or ""
        audio = [c for c in item.content if c.type == "input_audio" and c.transcript is None]
        size = len(audio[0].audio or b"") if audio else 0
        if self._pending_item_audio + size > MAX_PENDING_ITEM_AUDIO:
            index = item.content.index(audio[0])
            raise ClientEventError(
                "input_audio_pending_full",
                f"items with audio wait to be transcribed one at a time; at most "
                f"{MAX_PENDING_ITEM_AUDIO // 2**20} MiB of their audio may wait",
                param=f"item.content[{index}].audio",
            )
        prev = self.conversation.add(item, ev.previous_item_id)
        p = self.protocol
        await self._send(
            p.event("conversation.item.added", previous_item_id=prev, item=p.item(item))
        )
        if p.knows("conversation.item.done"):
            await self._send(
                p.event("conversation.item.done", previous_item_id=prev, item=p.item(item))
            )
        await announce_evicted(self.conversation, p, self._send)
        if audio:
            self._pending_item_audio += size
            self._expect_transcript(item.id)
            self._spawn(self._transcribe_item(item, audio[0], size))

    # -- responses -----------------------------------------------------------------------

    def _plan(self, params: ResponseParams) -> ResponsePlan:
        c = self.config
        inputs: list[Item] | None = None
        if params.input is not None:
            inputs = []
            for i, x in enumerate(params.input):
                if isinstance(x, str):
                    if x not in self.conversation:
                        raise ClientEventError(
                            "item_not_found",
                            f"response.input[{i}] refers to item {x!r}, which does not exist",
                            param=f"response.input[{i}]",
                        )
                    inputs.append(self.conversation.get(x))
                else:
                    inputs.append(x)
        choice, named = params.tool_choice or (c.tool_choice, c.function_choice)
        tools = params.tools if params.tools is not None else c.tools
        check_tool_choice(choice, named, tools, "response.tool_choice")
        return ResponsePlan(
            id=self.ids("resp"),
            in_conversation=params.conversation == "auto",
            instructions=params.instructions if params.instructions is not None else c.instructions,
            modalities=params.output_modalities or c.output_modalities,
            tools=tools,
            tool_choice=choice,
            named_choice=named,
            max_output_tokens=params.max_output_tokens
            if params.max_output_tokens_set
            else c.max_output_tokens,
            temperature=c.temperature,
            output_format=params.output_format or c.output_format,
            voice=self._voice_of(params.voice or c.voice),
            input=inputs,
            metadata=params.metadata,
        )

    async def _create_response(self, params: ResponseParams | None = None) -> Response:
        with contextlib.suppress(EngineError):  # an engine that fails says so when it speaks
            await self._default_voice()
        plan = self._plan(params or ResponseParams())
        if plan.in_conversation and self._current is not None:
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"response {self._current.id} is still in progress: cancel it or wait for "
                "response.done",
            )
        try:
            model = self.deps.resolve_model(self.config.model)
        except EngineError as exc:
            raise ClientEventError(
                "invalid_value", exc.public_message, param="session.model"
            ) from None
        tts_name, voice, speed = self._tts_name(self.config), plan.voice or None, self.config.speed
        if voice == self._voice_name:
            voice = None

        async def open_voice() -> SynthesisStream:
            return await self._voice(tts_name, voice, speed)

        response = Response(
            plan=plan,
            protocol=self.protocol,
            conversation=self.conversation,
            model=model,
            open_voice=open_voice,
            transcripts_of=self._await_transcripts,
            workers=self.deps.workers,
            send=self._send,
            ids=self.ids,
            counters=self.counters,
        )
        self._responses[plan.id] = response
        if plan.in_conversation:
            self._current = response
            self.detector.disarm_idle()
        self._spawn(self._run_response(response))
        return response

    async def _run_response(self, response: Response) -> None:
        try:
            await response.run()
        finally:
            self._responses.pop(response.id, None)
            if self._current is response:
                self._current = None
                self.detector.arm_idle(response.audio_ms)

    async def _voice(self, engine: str, voice: str | None, speed: float) -> SynthesisStream:
        key = (engine, voice, speed)
        stream = self._voices.get(key)
        if stream is None:
            tts = await self.deps.get_tts(engine)
            stream = await tts.open(
                SynthesisOptions(voice=voice, speed=speed, api_key=self.deps.engine_key(engine))
            )
            self._voices[key] = stream
        return stream

    def _cancel(self, response_id: str | None) -> None:
        target = self._responses.get(response_id) if response_id else self._current
        if target is None and response_id is None and self._responses:
            target = next(iter(self._responses.values()))
        if target is None or not target.active:
            raise ClientEventError(
                "response_cancel_not_active",
                # OpenAI's wording: clients (LiveKit) recognise the harmless race by it
                f"Cancellation failed: no active response found with id {response_id!r}"
                if response_id
                else "Cancellation failed: no active response found",
                param="response_id" if response_id else None,
            )
        target.cancel("client_cancelled")

    async def _await_transcripts(self, items: list[Item]) -> None:
        waiting = [f for i in items if (f := self._transcripts.get(i.id)) is not None]
        if waiting:
            await asyncio.gather(*waiting, return_exceptions=True)

    # -- transcription -------------------------------------------------------------------

    def _expect_transcript(self, item_id: str) -> None:
        self._transcripts[item_id] = asyncio.get_running_loop().create_future()

    async def transcribed(self, item_id: str, text: str, seconds: float) -> None:
        """A committed item's transcript is known: fill it in and tell the client."""
        future = self._transcripts.pop(item_id, None)
        if item_id in self.conversation:
            item = self.conversation.get(item_id)
            for part in item.content:
                if part.type == "input_audio" and part.transcript is None:
                    part.transcript = text
                    break
        if self.config.transcription is not None:
            p = self.protocol
            common = {"item_id": item_id, "content_index": 0}
            if text:
                await self._send(
                    p.event(
                        "conversation.item.input_audio_transcription.delta", **common, delta=text
                    )
                )
            await self._send(
                p.event(
                    "conversation.item.input_audio_transcription.completed",
                    **common,
                    transcript=text,
                    usage={"type": "duration", "seconds": round(seconds, 3)},
                )
            )
        if future is not None and not future.done():
            future.set_result(text)

    async def transcription_failed(self, item_id: str, error: EngineError) -> None:
        future = self._transcripts.pop(item_id, None)
        await self._send(
            self.protocol.event(
                "conversation.item.input_audio_transcription.failed",
                item_id=item_id,
                content_index=0,
                error={
                    "type": "server_error",
                    "code": error.code,
                    "message": error.public_message,
                    "param": None,
                },
            )
        )
        if future is not None and not future.done():
            future.set_result("")

    async def _transcribe_item(self, item: Item, part: ContentPart, size: int) -> None:
        """Transcribe audio the client put in an item (a stream of its own). One item at a
        time per session: each stream holds a decoder, and a new native decoder takes
        the interpreter for a third of a second to build."""
        try:
            async with self._item_transcription:
                await self._transcribe_part(item, part)
        finally:
            self._pending_item_audio -= size

    async def _transcribe_part(self, item: Item, part: ContentPart) -> None:
        fmt = self.config.input_format
        pcm = to_pcm16(part.audio or b"", fmt.encoding) if part.audio else b""
        part.audio = None  # it is never sent back: only its transcript is kept
        try:
            stt = await self.deps.get_stt(self._stt_name(self.config))
            key = self.deps.engine_key(stt.name)
            stream = await stt.open(RecognitionOptions(interim_results=False, api_key=key))
            try:
                rs = StreamResampler(fmt.rate, stream.sample_rate)
                await stream.send(await self.deps.workers.run(rs.process, pcm) + rs.flush())
                await stream.finalize()
                async for ev in stream.events():
                    if isinstance(ev, Finalized):
                        await self.transcribed(item.id, ev.text, len(pcm) / 2 / fmt.rate)
                        return
                    if isinstance(ev, RecognitionFailed):
                        raise ev.error
            finally:
                await stream.aclose()
        except EngineError as exc:
            await self.transcription_failed(item.id, exc)

    # -- the input pipeline --------------------------------------------------------------

    async def _run_pipeline(self) -> None:
        while True:
            item = await self._audio.get()
            batch: list[bytes] = []
            while isinstance(item, bytes):
                batch.append(item)
                if self._audio.empty():
                    break
                item = self._audio.get_nowait()
            if batch:
                await self._step(self._take_audio(b"".join(batch)))
            if isinstance(item, _Marker):
                await self._step(self._marker(item))

    async def _step(self, step: Awaitable[None]) -> None:
        """One step of the input pipeline; its failure is told to the client and the
        pipeline goes on (the audio or marker of this step is lost)."""
        try:
            await step
        except ClientEventError as exc:
            await self._send(self.protocol.error(exc))
        except EngineError as exc:
            await self._send(self.error(exc.code, exc.public_message))
        except Exception as exc:  # a bug: this step is lost, the session's input goes on
            log.exception("realtime input pipeline failed")
            await self._send(self.error("internal_error", f"input lost ({type(exc).__name__})"))

    async def _marker(self, m: _Marker) -> None:
        p = self.protocol
        if m.kind == "commit":
            ms = AudioFormat(Encoding.PCM16, self.config.input_format.rate).duration_ms(
                len(self._buffer)
            )
            if ms < MIN_COMMIT_MS:
                raise ClientEventError(
                    "input_audio_buffer_commit_empty",
                    f"buffer too small: expected at least {MIN_COMMIT_MS} ms of audio, "
                    f"have {ms:.0f} ms",
                    event_id=m.event_id,
                )
            item_id = self._speech_item or self.ids("item")
            self.detector.reset()
            await self._commit(item_id)
        elif m.kind == "clear":
            self._clear_buffer()
            self._speech_item = None
            self.detector.reset()
            await self._send(p.event("input_audio_buffer.cleared"))
        elif m.kind == "format":
            self._clear_buffer()
            self._resampler = StreamResampler(self.config.input_format.rate, VAD_RATE)
            self._vad_pending = b""

    def _clear_buffer(self) -> None:
        self._buffer.clear()
        self._buffer_start_ms = self._position_ms

    @property
    def input_buffer_ms(self) -> float:
        """Milliseconds of audio in the input buffer (not yet committed or dropped)."""
        return len(self._buffer) * 1000 / (2 * self.config.input_format.rate)

    async def _take_audio(self, pcm: bytes) -> None:
        rate = self.config.input_format.rate
        ms = len(pcm) * 1000 / (2 * rate)
        cap = MAX_INPUT_BUFFER_SECONDS * rate * 2
        if self.config.turn_detection is None and len(self._buffer) + len(pcm) > cap:
            raise ClientEventError(
                "input_audio_buffer_full",
                f"the input audio buffer holds at most {MAX_INPUT_BUFFER_SECONDS} s of audio: "
                "commit or clear it (this audio was not added)",
                param="audio",
            )
        self._buffer += pcm
        self._position_ms += ms
        self.counters.audio_seconds += ms / 1000
        if len(pcm) > INLINE_VAD_BYTES:
            pcm16k, events = await self.deps.workers.run(self._analyse, pcm)
        else:
            pcm16k, events = self._analyse(pcm)  # a few frames: microseconds of VAD
        rec = await self._ensure_recognizer()
        sent = 0
        for offset, event in events:
            if offset > sent:
                await rec.stream.send(pcm16k[sent:offset])
                sent = offset
            await self._turn(event)
        if sent < len(pcm16k):
            await rec.stream.send(pcm16k[sent:])
        if self.config.turn_detection is not None:
            await self._bound_buffer(cap)

    async def _bound_buffer(self, cap: int) -> None:
        """With turn detection, the buffer holds a turn: between turns only the audio a
        turn's start may reach back to is kept, and a turn that outlasts the cap ends."""
        if self.detector.state is State.SPEAKING:
            if len(self._buffer) > cap:
                self.detector.reset()
                await self._turn(TurnEnded(round(self._position_ms)))
            return
        fmt = AudioFormat(Encoding.PCM16, self.config.input_format.rate)
        td = self.config.turn_detection or _NO_TURNS
        keep = fmt.bytes_for(td.prefix_padding_ms + IDLE_KEEP_MS)
        if len(self._buffer) > 2 * keep:
            drop = len(self._buffer) - keep
            del self._buffer[:drop]
            self._buffer_start_ms += fmt.duration_ms(drop)

    def _analyse(self, pcm: bytes) -> tuple[bytes, list[tuple[int, TurnEvent]]]:
        """Resample to 16 kHz and score the VAD; each turn event with its byte offset."""
        pcm16k = self._resampler.process(pcm) if self._resampler.from_rate != VAD_RATE else pcm
        if self.config.turn_detection is None:
            return pcm16k, []
        if self._vad is None:
            self._vad = self.deps.make_vad()
        vad = self._vad
        data = self._vad_pending + pcm16k
        size = vad.frame_bytes
        end = len(data) - len(data) % size
        self._vad_pending = data[end:]
        lead = len(data) - len(pcm16k)  # bytes of the data that came before this chunk
        events: list[tuple[int, TurnEvent]] = []
        self.detector.frame_ms = 1000 * vad.frame_samples / vad.sample_rate
        for i in range(0, end, size):
            for ev in self.detector.frame(vad.score(data[i : i + size])):
                events.append((max(0, i + size - lead), ev))
        return pcm16k, events

    async def _ensure_recognizer(self) -> _Recognizer:
        if self._recognizer is None:
            stt = await self.deps.get_stt(self._stt_name(self.config))
            lang = self.config.transcription.language if self.config.transcription else None
            key = self.deps.engine_key(stt.name)
            stream = await stt.open(
                RecognitionOptions(language=lang, interim_results=True, api_key=key)
            )
            self._recognizer = _Recognizer(self, stream)
            if stream.sample_rate != VAD_RATE:
                raise EngineError(
                    f"{stt.name} takes {stream.sample_rate} Hz; the agent feeds 16 kHz"
                )
        return self._recognizer

    async def _turn(self, event: TurnEvent) -> None:
        p = self.protocol
        td = self.config.turn_detection
        if isinstance(event, TurnStarted):
            drop = event.audio_start_ms - self._buffer_start_ms
            if drop > 0:
                nbytes = AudioFormat(Encoding.PCM16, self.config.input_format.rate).bytes_for(drop)
                del self._buffer[:nbytes]
                self._buffer_start_ms = event.audio_start_ms
            self._speech_item = self.ids("item")
            if td is not None and td.interrupt_response and self._current is not None:
                self._current.cancel("turn_detected")  # barge-in: before anything else
            await self._send(
                p.event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=event.audio_start_ms,
                    item_id=self._speech_item,
                )
            )
        elif isinstance(event, TurnEnded):
            item_id = self._speech_item or self.ids("item")
            await self._send(
                p.event(
                    "input_audio_buffer.speech_stopped",
                    audio_end_ms=event.audio_end_ms,
                    item_id=item_id,
                )
            )
            await self._commit(item_id)
            if td is not None and td.create_response:
                await self._auto_response()
        elif isinstance(event, IdleTimeout):
            item_id = self.ids("item")
            await self._send(
                p.event(
                    "input_audio_buffer.timeout_triggered",
                    audio_start_ms=event.audio_start_ms,
                    audio_end_ms=event.audio_end_ms,
                    item_id=item_id,
                )
            )
            await self._commit(item_id)
            await self._auto_response()

    async def _auto_response(self) -> None:
        if self._current is not None:  # still finishing a cancelled one: let it end first
            await self._current.finished.wait()
        await self._create_response()

    async def _commit(self, item_id: str) -> None:
        self._speech_item = None
        self._clear_buffer()
        item = Item(item_id, "message", role="user", content=[ContentPart("input_audio")])
        prev = self.conversation.add(item)
        p = self.protocol
        self._expect_transcript(item_id)
        await self._send(
            p.event("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)
        )
        await self._send(
            p.event("conversation.item.added", previous_item_id=prev, item=p.item(item))
        )
        if p.knows("conversation.item.done"):
            await self._send(
                p.event("conversation.item.done", previous_item_id=prev, item=p.item(item))
            )
        await announce_evicted(self.conversation, p, self._send)
        rec = await self._ensure_recognizer()
        await rec.finalize(item_id)


async def _gone(_frame: str) -> None:
    """The ``send`` of a closed agent: its connection is gone."""


#: The detector of a session without turn detection is never fed; it needs a config.
_NO_TURNS = TurnDetection()
