"""Cloudflare AI Gateway's realtime WebSocket examples, translated to Python, host changed.

Each example keeps its address shape, its headers and its query exactly as documented
(``wss://gateway.ai.cloudflare.com/v1/{account}/{gateway}/{provider}…`` becomes
``ws://127.0.0.1:PORT/v1/local/default/{provider}…``). The provider behind the relay is
a local server at the provider's real paths that echoes and records the handshake.
"""

from __future__ import annotations

import orjson
import pytest
from tests.conftest import Gateway, GatewayFactory
from websockets.asyncio.client import connect

from voxgate.testing import RecordingUpstream

CF_TOKEN = "cf-gateway-token"


@pytest.fixture
async def gw(gateway: GatewayFactory, upstream: RecordingUpstream) -> Gateway:
    bases = {
        "openai": "/v1/realtime",
        "google": "",
        "cartesia": "",
        "elevenlabs": "/v1",
        "fal": "",
    }
    providers = "".join(
        f'[providers.{name}]\nurl = "{upstream.url}/{name}{path}"\n' for name, path in bases.items()
    )
    toml = (
        providers + "[accounts.local.gateways.default]\n"
        'tokens = [{ name = "cf", env = "CF" }]\n'
        'keys = { openai = { env = "STORED" } }\n'
    )
    return await gateway(toml, {"CF": CF_TOKEN, "STORED": "stored-openai"})


def host(gw: Gateway) -> str:
    return f"ws://127.0.0.1:{gw.port}/v1/local/default"


async def test_openai_example(gw: Gateway, upstream: RecordingUpstream) -> None:
    url = f"{host(gw)}/openai?model=gpt-4o-realtime-preview-2024-12-17"
    headers = {
        "cf-aig-authorization": CF_TOKEN,  # the example sends the bare token
        "Authorization": "Bearer sk-openai-own",
        "OpenAI-Beta": "realtime=v1",
    }
    async with connect(url, additional_headers=headers) as ws:
        event = {"type": "response.create", "response": {"modalities": ["text"]}}
        await ws.send(orjson.dumps(event).decode())
        assert orjson.loads(await ws.recv()) == event
    hs = upstream.handshakes[0]
    assert hs.path == "/openai/v1/realtime"
    assert hs.query_string == "model=gpt-4o-realtime-preview-2024-12-17"
    assert hs.headers["authorization"] == "Bearer sk-openai-own"
    assert hs.headers["openai-beta"] == "realtime=v1"
    assert "cf-aig-authorization" not in hs.headers


async def test_google_example_api_key_becomes_key(gw: Gateway, upstream: RecordingUpstream) -> None:
    url = f"{host(gw)}/google?api_key=AIza-own"
    async with connect(url, additional_headers={"cf-aig-authorization": CF_TOKEN}) as ws:
        setup = {"setup": {"model": "models/gemini-2.0-flash-exp"}}
        await ws.send(orjson.dumps(setup).decode())
        assert orjson.loads(await ws.recv()) == setup
    hs = upstream.handshakes[0]
    assert hs.path == (
        "/google/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    )
    assert hs.query_string == "key=AIza-own"  # Google reads key, not api_key


async def test_cartesia_example(gw: Gateway, upstream: RecordingUpstream) -> None:
    url = f"{host(gw)}/cartesia?cartesia_version=2024-06-10&api_key=ck-own"
    async with connect(url, additional_headers={"cf-aig-authorization": CF_TOKEN}) as ws:
        request = {
            "model_id": "sonic",
            "transcript": "Hello, world! I'm generating audio on ",
            "voice": {"mode": "id", "id": "a0e99841-438c-4a64-b679-ae501e7d6091"},
            "language": "en",
            "context_id": "happy-monkeys-fly",
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000},
            "add_timestamps": True,
            "continue": True,
        }
        await ws.send(orjson.dumps(request).decode())
        assert orjson.loads(await ws.recv()) == request
    hs = upstream.handshakes[0]
    assert hs.path == "/cartesia/tts/websocket"
    assert hs.query_string == "cartesia_version=2024-06-10&api_key=ck-own"


async def test_elevenlabs_agent_example(gw: Gateway, upstream: RecordingUpstream) -> None:
    url = f"{host(gw)}/elevenlabs?agent_id=agent-123"
    headers = {"xi-api-key": "xi-own", "cf-aig-authorization": CF_TOKEN}
    async with connect(url, additional_headers=headers) as ws:
        init = {"type": "conversation_initiation_client_data"}
        await ws.send(orjson.dumps(init).decode())
        assert orjson.loads(await ws.recv()) == init
    hs = upstream.handshakes[0]
    assert hs.path == "/elevenlabs/v1/convai/conversation"  # not the bare base
    assert hs.query_string == "agent_id=agent-123"
    assert hs.headers["xi-api-key"] == "xi-own"


async def test_fal_example(gw: Gateway, upstream: RecordingUpstream) -> None:
    url = f"{host(gw)}/fal/fal-ai/fast-lcm-diffusion"
    headers = {"Authorization": "Key fal-own", "cf-aig-authorization": CF_TOKEN}
    async with connect(url, additional_headers=headers) as ws:
        prompt = {"prompt": "an island near sea, with seagulls", "num_inference_steps": 4}
        await ws.send(orjson.dumps(prompt).decode())
        assert orjson.loads(await ws.recv()) == prompt
    hs = upstream.handshakes[0]
    assert hs.path == "/fal/fal-ai/fast-lcm-diffusion"
    assert hs.headers["authorization"] == "Key fal-own"
