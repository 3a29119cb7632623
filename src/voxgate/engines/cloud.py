"""Cloud engines: the provider translators of ``protocols.speech.providers`` driven over
the relay's :class:`UpstreamConnector`, with the gateway's stored key for the provider.

Built per session (they hold no model): ``open`` receives the key to use in its options.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, Protocol

import aiohttp

from voxgate.engines.base import (
    EngineRejected,
    Finalized,
    RecognitionEvent,
    RecognitionFailed,
    RecognitionOptions,
    RecognitionStream,
    SpeechToText,
    STTCapabilities,
    SynthesisOptions,
    SynthesisStream,
    TextToSpeech,
    TTSCapabilities,
    UpstreamEngineError,
    Voice,
)
from voxgate.errors import UpstreamError
from voxgate.protocols.relay.providers import Provider, build_upstream_request
from voxgate.protocols.speech.providers import (
    DEEPGRAM_SPEEDS,
    ELEVENLABS_SPEEDS,
    AudioOut,
    CartesiaTTS,
    DeepgramSTT,
    DeepgramTTS,
    ElevenLabsTTS,
    ProviderFailed,
    UtteranceDone,
    cartesia_speeds,
)
from voxgate.transports.upstream import UpstreamConnector

DEFAULTS: dict[str, dict[str, str]] = {
    "elevenlabs": {"model_id": "eleven_flash_v2_5", "voice_id": "21m00Tcm4TlvDq8ikWAM"},
    "cartesia": {"model_id": "sonic-2", "voice_id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
    "deepgram": {"model_id": "aura-2-thalia-en", "stt_model_id": "nova-3"},
}
#: How long a finalize waits for the provider's answer before answering with what it has.
FINALIZE_WAIT_SECONDS = 5.0


class TTSTranslator(Protocol):
    sample_rate: int
    per_utterance_connection: bool

    def path(self) -> str: ...

    def query(self) -> str: ...

    def utterance(self, text: str, context_id: str) -> list[str]: ...

    def cancel(self, context_id: str) -> list[str]: ...

    def receive(self, data: str | bytes, context_id: str) -> list[Any]: ...


async def _connect(
    connector: UpstreamConnector, provider: Provider, path: str, query: str, key: str | None
) -> aiohttp.ClientWebSocketResponse:
    req = build_upstream_request(
        provider,
        path=path,
        query_string=query,
        client_headers=(),
        upstream_subprotocols=(),
        client_key=None,
        stored_key=key,
    )
    try:
        return await connector.connect(req, heartbeat=30.0)
    except UpstreamError as exc:
        status = exc.upstream_status
        refused = status is not None and 400 <= status < 500 and status != 408
        raise UpstreamEngineError(exc.public_message, retryable=not refused, status=status) from exc


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> str | bytes | None:
    msg = await ws.receive()
    if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return msg.data  # type: ignore[no-any-return]
    return None


class CloudTTS(TextToSpeech):
    def __init__(
        self,
        name: str,
        engine_type: str,
        *,
        connector: UpstreamConnector,
        provider: Provider,
        options: Mapping[str, Any],
    ) -> None:
        self.name = name
        self.type = engine_type
        self._connector = connector
        self._provider = provider
        self._options = {**DEFAULTS[engine_type], **options}
        self.voice_aliases = dict(self._options.get("voice_aliases") or {})

    @property
    def capabilities(self) -> TTSCapabilities:
        voice = self._options.get("voice_id")
        speeds = self.speed_range(self.default_voice_id)
        return TTSCapabilities(
            voices=(Voice(voice, voice),) if voice and self.type != "deepgram" else (),
            streaming_text=False,
            speed=speeds is not None,
            local=False,
            speed_range=speeds,
        )

    @property
    def default_voice_id(self) -> str:
        # Deepgram's voice is its model (aura-2-<voice>-en)
        key = "model_id" if self.type == "deepgram" else "voice_id"
        return str(self._options.get(key) or "")

    def speed_range(self, voice: str) -> tuple[float, float] | None:
        """The speeds the provider takes for ``voice`` (``None``: it has no speed control).

        ElevenLabs: ``voice_settings.speed``. Cartesia: ``generation_config.speed`` on
        sonic-3 and later, the experimental voice control on older models. Deepgram:
        the ``speed`` query parameter of ``speak``, for Aura-2 voices only."""
        if self.type == "elevenlabs":
            return ELEVENLABS_SPEEDS
        if self.type == "cartesia":
            return cartesia_speeds(str(self._options["model_id"]))
        return DEEPGRAM_SPEEDS if voice.startswith("aura-2") else None

    def translator(self, options: SynthesisOptions) -> TTSTranslator:
        o = self._options
        extra = dict(options.extra)
        voice = options.voice or self.default_voice_id
        if self.type == "elevenlabs":
            return ElevenLabsTTS(voice, o["model_id"], options.sample_rate, options.speed, extra)
        if self.type == "cartesia":
            return CartesiaTTS(
                voice, o["model_id"], options.sample_rate, options.language, extra, options.speed
            )
        return DeepgramTTS(voice, options.sample_rate, options.speed)

    async def open(self, options: SynthesisOptions) -> SynthesisStream:
        options = replace(options, voice=self.voice_for(options.voice))
        if options.speed != 1.0:
            self._check_speed(options.speed, options.voice or "")
        return CloudSynthesisStream(self, self.translator(options), options)

    def _check_speed(self, speed: float, voice: str) -> None:
        speeds = self.speed_range(voice)
        if speeds is None:
            raise EngineRejected(
                f"field 'speed': {self.name} has no speed control for voice {voice!r} "
                "(Deepgram's speed is for Aura-2 voices): leave speed at 1.0"
            )
        low, high = speeds
        if not low <= speed <= high:
            raise EngineRejected(
                f"field 'speed': {self.name} takes a speed of {low:g}–{high:g}, got {speed:g}"
            )


class CloudSynthesisStream(SynthesisStream):
    def __init__(self, engine: CloudTTS, translator: TTSTranslator, options: SynthesisOptions):
        self._engine = engine
        self._t = translator
        self._key = options.api_key
        self.sample_rate = translator.sample_rate
        self.voice = options.voice or engine.default_voice_id
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._count = 0

    async def _connection(self) -> aiohttp.ClientWebSocketResponse:
        if self._ws is None or self._ws.closed:
            e = self._engine
            self._ws = await _connect(
                e._connector, e._provider, self._t.path(), self._t.query(), self._key
            )
        return self._ws

    async def synthesize(self, text: str, *, first: bool = True) -> AsyncIterator[bytes]:
        self._count += 1
        context_id = f"utt-{self._count}"
        ws = await self._connection()
        done = False
        try:
            for frame in self._t.utterance(text, context_id):
                await ws.send_str(frame)
            while not done:
                data = await _receive(ws)
                if data is None:
                    raise UpstreamEngineError(
                        f"{self._engine.name} closed the connection ({ws.close_code})",
                        retryable=True,
                    )
                for reply in self._t.receive(data, context_id):
                    if isinstance(reply, AudioOut):
                        yield reply.pcm
                    elif isinstance(reply, UtteranceDone):
                        done = True
                    elif isinstance(reply, ProviderFailed):
                        raise UpstreamEngineError(reply.message, retryable=reply.retryable)
        finally:
            if not done or self._t.per_utterance_connection:
                await self._interrupt(ws, context_id)

    async def _interrupt(self, ws: aiohttp.ClientWebSocketResponse, context_id: str) -> None:
        frames = self._t.cancel(context_id)
        with contextlib.suppress(ConnectionError, RuntimeError):
            if frames and not self._t.per_utterance_connection:
                for frame in frames:
                    await ws.send_str(frame)
                return
            await ws.close()

    async def aclose(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._ws.close()


class CloudSTT(SpeechToText):
    def __init__(
        self,
        name: str,
        *,
        connector: UpstreamConnector,
        provider: Provider,
        options: Mapping[str, Any],
    ) -> None:
        self.name = name
        self._connector = connector
        self._provider = provider
        self._options = {**DEFAULTS["deepgram"], **options}
        self.model_id = str(self._options["stt_model_id"])

    @property
    def capabilities(self) -> STTCapabilities:
        return STTCapabilities(streaming=True, partials=True, languages=("multi",), local=False)

    async def open(self, options: RecognitionOptions) -> RecognitionStream:
        t = DeepgramSTT(self.model_id, options.language, options.interim_results)
        ws = await _connect(self._connector, self._provider, t.path(), t.query(), options.api_key)
        return CloudRecognitionStream(ws, t)


class CloudRecognitionStream(RecognitionStream):
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, translator: DeepgramSTT) -> None:
        self.sample_rate = translator.sample_rate
        self._ws = ws
        self._t = translator
        self._events: asyncio.Queue[RecognitionEvent | None] = asyncio.Queue()
        self._finalize_timer: asyncio.TimerHandle | None = None
        self._reader = asyncio.create_task(self._read(), name="stt-cloud")

    async def send(self, pcm: bytes) -> None:
        if pcm:  # an empty binary frame ends a Deepgram stream
            await self._ws.send_bytes(self._t.audio(pcm))

    async def finalize(self) -> None:
        await self._ws.send_str(self._t.finalize())
        loop = asyncio.get_running_loop()
        self._finalize_timer = loop.call_later(FINALIZE_WAIT_SECONDS, self._finalize_unanswered)

    def _finalize_unanswered(self) -> None:
        self._events.put_nowait(self._t.finalized_now())

    async def events(self) -> AsyncIterator[RecognitionEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    async def _read(self) -> None:
        while True:
            data = await _receive(self._ws)
            if data is None:
                if self._ws.close_code not in (1000, None):
                    reason = f"deepgram closed the stream ({self._ws.close_code})"
                    self._events.put_nowait(
                        RecognitionFailed(UpstreamEngineError(reason, retryable=False))
                    )
                return
            for event in self._t.receive(data):
                if isinstance(event, Finalized) and self._finalize_timer is not None:
                    self._finalize_timer.cancel()
                    self._finalize_timer = None
                self._events.put_nowait(event)

    async def aclose(self) -> None:
        if self._finalize_timer is not None:
            self._finalize_timer.cancel()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.send_str(self._t.close())
            await self._ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self._events.put_nowait(None)
