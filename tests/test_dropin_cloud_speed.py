"""``speed`` on the cloud engines (issue 13, part 3): applied where the provider has the
control — checked in what the local stand-in of each provider receives — and refused,
naming the range or the reason, where it has none.

- Cartesia: ``generation_config.speed`` (0.6–1.5) on sonic-3 and later; on older models
  (voxgate's default ``sonic-2``) the experimental voice control
  ``voice.__experimental_controls.speed`` (-1…1), from speeds 0.5–1.5.
- Deepgram: the ``speed`` query parameter of ``/v1/speak`` (0.7–1.5), Aura-2 voices only.
- ElevenLabs: ``voice_settings.speed`` (0.7–1.2).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from conftest import GatewayFactory
from test_speech_cloud import FakeProviders, providers  # noqa: F401 - fixture
from test_speech_e2e import receive_until
from voxgate.protocols.speech.providers import CartesiaTTS, DeepgramTTS


def test_translators_carry_the_speed() -> None:
    (old,) = (
        orjson.loads(f)
        for f in CartesiaTTS("v", "sonic-2", 24000, speed=1.25).utterance("Hi.", "c")
    )
    assert old["voice"] == {"mode": "id", "id": "v", "__experimental_controls": {"speed": 0.5}}
    assert "generation_config" not in old
    extra = {"generation_config": {"volume": 1.5, "speed": 9}}
    (new,) = (
        orjson.loads(f)
        for f in CartesiaTTS("v", "sonic-3", 24000, None, extra, 0.8).utterance("Hi.", "c")
    )
    assert new["generation_config"] == {"volume": 1.5, "speed": 0.8}  # speed wins
    (plain,) = (orjson.loads(f) for f in CartesiaTTS("v", "sonic-3", 24000).utterance("Hi.", "c"))
    assert "generation_config" not in plain
    assert "__experimental_controls" not in plain["voice"]
    assert DeepgramTTS("aura-2-thalia-en", 24000, 1.25).query().endswith("&speed=1.25")
    assert "speed" not in DeepgramTTS("aura-2-thalia-en", 24000).query()


async def _session(
    http: aiohttp.ClientSession, url: str, steps: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Run ``steps`` (init/configure/text) and return every event up to the last."""
    events: list[dict[str, Any]] = []
    async with http.ws_connect(url) as ws:
        for step in steps:
            await ws.send_json(step)
            kind = step["type"]
            if kind == "init":
                events += await receive_until(ws, "ready")
            elif kind == "configure":
                events += await receive_until(ws, "configured")
            else:
                await ws.send_json({"type": "flush"})
                events += await receive_until(ws, "audio_end")
    return events


def _errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "error"]


async def test_cartesia_speed_on_sonic_2_and_sonic_3(
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    providers: FakeProviders,  # noqa: F811
) -> None:
    gw = await gateway(providers.toml(), env={"K": providers.key})
    events = await _session(
        http,
        gw.ws("/v1/tts/cartesia"),
        [
            {"type": "init", "speed": 1.2},
            {"type": "input_text", "text": "Faster."},
            {"type": "configure", "speed": 0.75},
            {"type": "input_text", "text": "Slower."},
        ],
    )
    assert not _errors(events), events
    assert events[0]["capabilities"]["speed"] is True
    assert events[0]["capabilities"]["speed_range"] == [0.5, 1.5]
    sent = [m for m in providers.received["cartesia"] if "transcript" in m]
    assert [m["voice"].get("__experimental_controls") for m in sent] == [
        {"speed": 0.4},
        {"speed": -0.5},
    ]
    configured = next(e for e in events if e["type"] == "configured")
    assert configured["speed"] == 0.75

    providers.received.clear()
    gw3 = await gateway(
        providers.toml() + '[speech.engines.cartesia]\nmodel_id = "sonic-3"\n',
        env={"K": providers.key},
    )
    events = await _session(
        http,
        gw3.ws("/v1/tts/cartesia"),
        [
            {"type": "init", "speed": 1.3, "generation_config": {"volume": 1.2}},
            {"type": "input_text", "text": "Hello."},
        ],
    )
    assert not _errors(events), events
    (req,) = [m for m in providers.received["cartesia"] if "transcript" in m]
    assert req["model_id"] == "sonic-3"
    assert req["generation_config"] == {"volume": 1.2, "speed": 1.3}
    assert "__experimental_controls" not in req["voice"]


@pytest.mark.parametrize(
    ("toml", "engine", "init", "expected"),
    [
        (
            '[speech.engines.cartesia]\nmodel_id = "sonic-3"\n',
            "cartesia",
            {"speed": 2.0},
            "0.6–1.5",
        ),
        ("", "cartesia", {"speed": 0.3}, "0.5–1.5"),
        ("", "deepgram", {"speed": 1.6}, "0.7–1.5"),
        ("", "deepgram", {"speed": 1.1, "voice_id": "aura-asteria-en"}, "no speed control"),
        ("", "elevenlabs", {"speed": 1.5}, "0.7–1.2"),
    ],
)
async def test_speed_out_of_the_providers_range_is_refused_plainly(
    toml: str,
    engine: str,
    init: dict[str, Any],
    expected: str,
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    providers: FakeProviders,  # noqa: F811
) -> None:
    gw = await gateway(providers.toml() + toml, env={"K": providers.key})
    async with http.ws_connect(gw.ws(f"/v1/tts/{engine}")) as ws:
        await ws.send_json({"type": "init", **init})
        err = (await receive_until(ws, "error"))[-1]
        assert err["code"] == "invalid_field"
        assert "speed" in err["message"]
        assert expected in err["message"]
        # the session goes on: an init the provider can serve is accepted
        await ws.send_json({"type": "init"})
        assert (await receive_until(ws, "ready"))[-1]["type"] == "ready"
    assert providers.received.get(engine if engine != "deepgram" else "speak") is None


async def test_deepgram_speed_is_a_query_parameter_of_speak(
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    providers: FakeProviders,  # noqa: F811
) -> None:
    gw = await gateway(providers.toml(), env={"K": providers.key})
    events = await _session(
        http,
        gw.ws("/v1/tts/deepgram"),
        [
            {"type": "init", "speed": 1.25},
            {"type": "input_text", "text": "Quick."},
        ],
    )
    assert not _errors(events), events
    assert events[0]["capabilities"]["speed_range"] == [0.7, 1.5]
    assert providers.handshakes["speak"]["speed"] == "1.25"
    assert providers.handshakes["speak"]["model"] == "aura-2-thalia-en"
    # configure: the next utterance goes over a connection with the new speed
    events = await _session(
        http,
        gw.ws("/v1/tts/deepgram"),
        [
            {"type": "init"},
            {"type": "input_text", "text": "Normal."},
            {"type": "configure", "speed": 0.8},
            {"type": "input_text", "text": "Slow."},
        ],
    )
    assert not _errors(events), events
    assert providers.handshakes["speak"]["speed"] == "0.8"


async def test_elevenlabs_speed_is_a_voice_setting(
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    providers: FakeProviders,  # noqa: F811
) -> None:
    gw = await gateway(providers.toml(), env={"K": providers.key})
    events = await _session(
        http,
        gw.ws("/v1/tts/elevenlabs"),
        [{"type": "init", "speed": 1.1}, {"type": "input_text", "text": "Hi."}],
    )
    assert not _errors(events), events
    assert providers.received["elevenlabs"][0]["voice_settings"] == {"speed": 1.1}


async def test_catalogue_voices_map_to_the_cloud_engines_configured_voice(
    gateway: GatewayFactory,
    http: aiohttp.ClientSession,
    providers: FakeProviders,  # noqa: F811
) -> None:
    """``voice_id: "tara"`` on Cartesia speaks with the configured voice; a voice alias
    may name any of the provider's voices; other names go to the provider as they are."""
    gw = await gateway(
        providers.toml()
        + '[speech.engines.cartesia]\nvoice_aliases = { Clive = "cartesia-voice-2" }\n',
        env={"K": providers.key},
    )
    events = await _session(
        http,
        gw.ws("/v1/tts/cartesia"),
        [
            {"type": "init", "voice_id": "tara"},
            {"type": "input_text", "text": "One."},
            {"type": "configure", "voice_id": "Clive"},
            {"type": "input_text", "text": "Two."},
            {"type": "configure", "voice_id": "my-own-cartesia-voice"},
            {"type": "input_text", "text": "Three."},
        ],
    )
    assert not _errors(events), events
    default = "a0e99841-438c-4a64-b679-ae501e7d6091"
    assert events[0]["voice_id"] == default
    sent = [m["voice"]["id"] for m in providers.received["cartesia"] if "transcript" in m]
    assert sent == [default, "cartesia-voice-2", "my-own-cartesia-voice"]
