"""The speech engines a session uses, local or cloud: what the speech, realtime and
dashboard routes share (route modules are leaves: they import this, never each other)."""

from __future__ import annotations

from typing import Any

from voxgate.engines.base import SpeechToText, TextToSpeech
from voxgate.engines.cloud import CloudSTT, CloudTTS
from voxgate.server.services import Services


async def tts_engine(s: Services, name: str) -> TextToSpeech:
    """The TTS engine ``name``: the shared local engine, or a cloud engine's client."""
    if not s.engines.provider_of(name):
        return await s.engines.tts(name)
    return cloud_tts(s, name)


def cloud_tts(s: Services, name: str) -> CloudTTS:
    """The client of the cloud TTS engine ``name`` (cheap: nothing is opened)."""
    return CloudTTS(
        name,
        s.engines.type_of(name),
        connector=s.connector,
        provider=s.providers[s.engines.provider_of(name)],
        options=_options(s, name),
    )


async def stt_engine(s: Services, name: str) -> SpeechToText:
    provider = s.engines.provider_of(name)
    if not provider:
        return await s.engines.stt(name)
    return CloudSTT(
        name, connector=s.connector, provider=s.providers[provider], options=_options(s, name)
    )


def _options(s: Services, name: str) -> dict[str, Any]:
    engine = s.settings.speech.engines.get(name)
    return dict(engine.options) if engine is not None else {}
