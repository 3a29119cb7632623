"""The response controller: plans responses, runs them, cancels them, and owns the voices.

At most one response is *current* (in the conversation) at a time; out-of-band ones
(``conversation: "none"``) run beside it. The controller keeps one synthesis stream per
(engine, voice, speed) for the session, and knows the voice the TTS engine in use
speaks when none is named.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from voxgate.clock import IdFactory
from voxgate.core.realtime.conversation import Conversation
from voxgate.core.realtime.deps import AgentDeps
from voxgate.core.realtime.ports import AudioSink
from voxgate.core.realtime.response import Emit, Response, ResponsePlan
from voxgate.core.realtime.transcriber import Transcriber
from voxgate.core.relay import RelaySession
from voxgate.engines.base import EngineError, SynthesisOptions, SynthesisStream, TextToSpeech
from voxgate.protocols.realtime import events as ev
from voxgate.protocols.realtime.errors import ClientEventError
from voxgate.protocols.realtime.items import Item
from voxgate.protocols.realtime.protocol import ResponseParams
from voxgate.protocols.realtime.session import SessionConfig, check_tool_choice

#: The share of a rate limit left under which ``low`` reporting tells the client.
LOW = 0.25


class ResponseController:
    def __init__(
        self,
        *,
        deps: AgentDeps,
        config: Callable[[], SessionConfig],
        conversation: Conversation,
        transcriber: Transcriber,
        emit: Emit,
        sink: AudioSink,
        ids: IdFactory,
        counters: RelaySession,
        spawn: Callable[[Awaitable[None]], None],
        on_start: Callable[[], None],
        on_end: Callable[[float], None],
    ) -> None:
        self._deps = deps
        self._config = config
        self._conversation = conversation
        self._transcriber = transcriber
        self._emit = emit
        self.sink = sink
        self._ids = ids
        self._counters = counters
        self._spawn = spawn
        #: A response in the conversation starts (the idle timer stops) and ends (after
        #: this much audio of it, the idle timer starts).
        self._on_start = on_start
        self._on_end = on_end
        #: When ``rate_limits.updated`` follows a response: ``always`` (as OpenAI's calls
        #: do), or ``low``: only once the messages left this minute are under a quarter
        #: (the WebSocket's clients were never sent it, and the event order they expect
        #: after ``response.done`` stays as it was).
        self.report_limits = "low"
        self.responses: dict[str, Response] = {}
        self.current: Response | None = None
        self._voices: dict[tuple[str, str | None, float], SynthesisStream] = {}
        #: The TTS engine in use (loaded by :meth:`default_voice`), its name and voice.
        self._tts: TextToSpeech | None = None
        self._tts_name = ""
        self.voice_name = ""

    # -- voices --------------------------------------------------------------------------

    async def default_voice(self) -> str:
        """The TTS engine's voice used when none is named (loads the engine once, and
        again when the session changes engines)."""
        name = self._deps.tts_name(self._config())
        if self._tts is None or self._tts_name != name:
            tts = await self._deps.get_tts(name)
            self._tts, self._tts_name = tts, name
            self.voice_name = tts.voice_for(None)
        return self.voice_name

    def voice_of(self, requested: str | None) -> str:
        """The voice ``requested`` is spoken with by the engine in use: itself, the
        engine's default for none, or what a name of another catalogue (``alloy``,
        ``Clive``) maps to (``voice_aliases``). Unresolved while the engine is not loaded."""
        if self._tts is None or self._tts_name != self._deps.tts_name(self._config()):
            return requested or self.voice_name
        return self._tts.voice_for(requested)

    async def _voice(self, engine: str, voice: str | None, speed: float) -> SynthesisStream:
        key = (engine, voice, speed)
        stream = self._voices.get(key)
        if stream is None:
            tts = await self._deps.get_tts(engine)
            stream = await tts.open(
                SynthesisOptions(voice=voice, speed=speed, api_key=self._deps.engine_key(engine))
            )
            self._voices[key] = stream
        return stream

    # -- responses -----------------------------------------------------------------------

    def plan(self, params: ResponseParams) -> ResponsePlan:
        c = self._config()
        inputs: list[Item] | None = None
        if params.input is not None:
            inputs = []
            for i, x in enumerate(params.input):
                if isinstance(x, str):
                    if x not in self._conversation:
                        raise ClientEventError(
                            "item_not_found",
                            f"response.input[{i}] refers to item {x!r}, which does not exist",
                            param=f"response.input[{i}]",
                        )
                    inputs.append(self._conversation.get(x))
                else:
                    inputs.append(x)
        choice, named = params.tool_choice or (c.tool_choice, c.function_choice)
        tools = params.tools if params.tools is not None else c.tools
        check_tool_choice(choice, named, tools, "response.tool_choice")
        return ResponsePlan(
            id=self._ids("resp"),
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
            voice=self.voice_of(params.voice or c.voice),
            input=inputs,
            metadata=params.metadata,
        )

    async def create(self, params: ResponseParams | None = None) -> Response:
        """Start a response (raises :class:`ClientEventError` when it cannot start)."""
        with contextlib.suppress(EngineError):  # an engine that fails says so when it speaks
            await self.default_voice()
        plan = self.plan(params or ResponseParams())
        if plan.in_conversation and self.current is not None:
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"response {self.current.id} is still in progress: cancel it or wait for "
                "response.done",
            )
        c = self._config()
        try:
            model = self._deps.resolve_model(c.model)
        except EngineError as exc:
            raise ClientEventError(
                "invalid_value", exc.public_message, param="session.model"
            ) from None
        tts_name, voice, speed = self._deps.tts_name(c), plan.voice or None, c.speed
        if voice == self.voice_name:
            voice = None

        async def open_voice() -> SynthesisStream:
            return await self._voice(tts_name, voice, speed)

        response = Response(
            plan=plan,
            conversation=self._conversation,
            model=model,
            open_voice=open_voice,
            transcripts_of=self._transcriber.wait_for,
            workers=self._deps.workers,
            emit=self._emit,
            sink=self.sink,
            ids=self._ids,
            counters=self._counters,
        )
        self.responses[plan.id] = response
        if plan.in_conversation:
            self.current = response
            self._on_start()
        self._spawn(self._run(response))
        return response

    async def _run(self, response: Response) -> None:
        try:
            await response.run()
            limits = self.rate_limits()
            [requests] = limits.rate_limits
            if self.report_limits == "always" or requests.remaining < requests.limit * LOW:
                await self._emit(limits)
        finally:
            self.responses.pop(response.id, None)
            if self.current is response:
                self.current = None
                self._on_end(response.audio_ms)

    def rate_limits(self) -> ev.RateLimitsUpdated:
        """The session's limit on client messages, as OpenAI reports its rate limits after
        each response (``requests``: messages per minute)."""
        limit, left, reset = self._counters.requests_left(asyncio.get_running_loop().time())
        return ev.RateLimitsUpdated((ev.RateLimit("requests", limit, left, reset),))

    async def after_current(self) -> None:
        """Until the current response (say, one being cancelled) has finished."""
        if self.current is not None:
            await self.current.finished.wait()

    def cancel(self, response_id: str | None) -> None:
        """``response.cancel``: the named response, else the current one."""
        target = self.responses.get(response_id) if response_id else self.current
        if target is None and response_id is None and self.responses:
            target = next(iter(self.responses.values()))
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

    async def close(self) -> None:
        for r in list(self.responses.values()):
            r.cancel("client_cancelled")
        for stream in self._voices.values():
            with contextlib.suppress(Exception):
                await stream.aclose()
        self._voices.clear()
        self.responses.clear()
        self.current = None
