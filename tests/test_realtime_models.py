"""Model names on ``/v1/realtime``: bare OpenAI names (``gpt-realtime``) run the default
agent and are echoed, or are relayed to OpenAI where configured; no name runs the default;
an unknown provider is refused naming it. The same rule on every route that takes a model."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest
from openai.types.beta.realtime import SessionCreateResponse
from openai.types.realtime import ClientSecretCreateResponse

from conftest import UPGRADE_HEADERS, GatewayFactory, provider_overrides, settled
from test_realtime_e2e import FakeChat
from test_realtime_ws import AUTH, TOKEN, TOKENS, connect, text_item
from voxgate.server.realtime_models import ModelChoice, choose_model
from voxgate.settings import GatewaySettings, RealtimeSettings, Secret
from voxgate.testing import RecordingUpstream

PROVIDERS = {"openai": object()}
WITH_KEY = GatewaySettings("local", "default", keys={"openai": Secret("K", "sk-stored")})
UNSET_KEY = GatewaySettings("local", "default", keys={"openai": Secret("K", None)})
NO_KEY = GatewaySettings("local", "default")
AGENT = RealtimeSettings(default_model="ollama/llama3.2")
RELAY = RealtimeSettings(default_model="ollama/llama3.2", openai_names="relay")


@pytest.mark.parametrize(
    ("requested", "realtime", "gateway", "expected"),
    [
        # bare OpenAI names run the default agent, and are echoed
        ("gpt-realtime", AGENT, WITH_KEY, ModelChoice("gpt-realtime", "ollama/llama3.2", False)),
        (
            "gpt-4o-realtime-preview-2024-12-17",
            AGENT,
            WITH_KEY,
            ModelChoice("gpt-4o-realtime-preview-2024-12-17", "ollama/llama3.2", False),
        ),
        # …or are relayed as openai/<name>, where configured and a key is stored
        ("gpt-realtime-2.1", RELAY, WITH_KEY, ModelChoice("gpt-realtime-2.1", "openai/gpt-realtime-2.1", True)),
        ("gpt-realtime", RELAY, NO_KEY, ModelChoice("gpt-realtime", "ollama/llama3.2", False)),
        ("gpt-realtime", RELAY, UNSET_KEY, ModelChoice("gpt-realtime", "ollama/llama3.2", False)),
        # a bare name that is no realtime model is not relayed
        ("gpt-4o-mini", RELAY, WITH_KEY, ModelChoice("gpt-4o-mini", "ollama/llama3.2", False)),
        # none named: the default
        (None, AGENT, NO_KEY, ModelChoice("ollama/llama3.2", "ollama/llama3.2", False)),
        ("", AGENT, NO_KEY, ModelChoice("ollama/llama3.2", "ollama/llama3.2", False)),
        # provider/model names are what they say
        ("voxgate/echo", RELAY, WITH_KEY, ModelChoice("voxgate/echo", "voxgate/echo", False)),
        ("openai/gpt-realtime", AGENT, NO_KEY, ModelChoice("openai/gpt-realtime", "openai/gpt-realtime", True)),
        ("nosuch/x", AGENT, NO_KEY, ModelChoice("nosuch/x", "nosuch/x", False)),
    ],
)  # fmt: skip
def test_choose_model(
    requested: str | None, realtime: RealtimeSettings, gateway: GatewaySettings, expected: Any
) -> None:
    assert (
        choose_model(requested, realtime=realtime, providers=PROVIDERS, gateway=gateway) == expected
    )


def fake_llm(chat: FakeChat) -> str:
    return (
        f'[llm.fake]\nbase_url = "{chat.url}"\napi_key_env = "FAKE_KEY"\n'
        '[realtime]\ndefault_model = "fake/tiny-model"\n'
    )


async def test_bare_names_run_the_default_model_and_are_echoed(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async with FakeChat() as chat:
        gw = await gateway(fake_llm(chat) + TOKENS, {"GW_TOKEN": TOKEN, "FAKE_KEY": "sk-fake"})
        for name in ("gpt-realtime", "gpt-realtime-2.1", "gpt-4o-realtime-preview-2024-12-17"):
            ws = await http.ws_connect(gw.ws(f"/v1/realtime?model={name}"), headers=AUTH)
            created = orjson.loads((await ws.receive()).data)
            assert created["session"]["model"] == name
            await ws.close()
        ws, rt = await connect(http, gw.ws("/v1/realtime?model=gpt-realtime"), headers=AUTH)
        await rt.send("session.update", session={"type": "realtime", "instructions": "Hi."})
        updated = await rt.recv()
        assert updated["session"]["model"] == "gpt-realtime"
        # the model named mid-session: echoed too, and run as the default
        await rt.send("session.update", session={"type": "realtime", "model": "gpt-4o-realtime"})
        assert (await rt.recv())["session"]["model"] == "gpt-4o-realtime"
        await rt.send("conversation.item.create", item=text_item("hello"))
        await rt.send("response.create", response={"output_modalities": ["text"]})
        done = (await rt.until("response.done"))[-1]["response"]
        assert done["status"] == "completed"
        await ws.close()
        assert [r["model"] for r in chat.requests] == ["tiny-model"]  # default_model's
        # no model: the default
        ws, _ = await connect(http, gw.ws("/v1/realtime"), headers=AUTH)
        await ws.close()
        await settled(gw)
    async with http.get(f"{gw.base}/v1/local/default/logs", headers=AUTH) as r:
        records = (await r.json())["records"]
    # the record names what ran
    assert {(rec["provider"], rec["model"]) for rec in records} == {("fake", "fake/tiny-model")}


async def test_unknown_provider_is_refused_naming_it(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway()
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await http.ws_connect(gw.ws("/v1/realtime?model=nosuch/x"))
    assert exc.value.status == 400
    async with http.get(
        f"{gw.base}/v1/realtime?model=nosuch/x",
        headers=UPGRADE_HEADERS,
    ) as r:
        assert r.status == 400
        assert "'nosuch'" in (await r.json())["error"]["message"]
    body = {"session": {"type": "realtime", "model": "nosuch/x"}}
    async with http.post(f"{gw.base}/v1/realtime/client_secrets", json=body) as r:
        assert r.status == 400
        assert "'nosuch'" in (await r.json())["error"]["message"]
    ws, rt = await connect(http, gw.ws("/v1/realtime?model=gpt-realtime"))
    await rt.send("session.update", session={"model": "nosuch/x"})
    error = (await rt.recv())["error"]
    assert error["param"] == "session.model"
    assert "'nosuch'" in error["message"]
    await ws.close()
    # a call agent takes the same names
    listen = {"listen": [{"sessionId": "s", "trackName": "t"}]}
    url = f"{gw.base}/v1/apps/default/agents/new"
    async with http.post(url, json={**listen, "session": {"model": "nosuch/x"}}) as r:
        assert r.status == 400
        assert "'nosuch'" in (await r.json())["errorDescription"]
    async with http.post(url, json={**listen, "session": {"model": "gpt-realtime"}}) as r:
        assert r.status == 404  # past the model: the track to listen to does not exist


async def test_client_secrets_and_beta_sessions_take_bare_names(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway(TOKENS, {"GW_TOKEN": TOKEN})
    body = {"session": {"type": "realtime", "model": "gpt-realtime"}}
    async with http.post(f"{gw.base}/v1/realtime/client_secrets", json=body, headers=AUTH) as r:
        assert r.status == 200
        minted = await r.json()
    ClientSecretCreateResponse.model_validate_json(orjson.dumps(minted), strict=True)
    assert minted["session"]["model"] == "gpt-realtime"
    # transcription on, by the default engine, named (never null)
    assert minted["session"]["audio"]["input"]["transcription"]["model"] == "pocketsphinx"
    protocols = ("realtime", f"openai-insecure-api-key.{minted['value']}")
    ws = await http.ws_connect(gw.ws("/v1/realtime"), protocols=protocols)
    created = orjson.loads((await ws.receive()).data)
    assert created["session"]["model"] == "gpt-realtime"
    await ws.close()
    # a secret minted with no model runs the default
    async with http.post(f"{gw.base}/v1/realtime/client_secrets", json={}, headers=AUTH) as r:
        assert (await r.json())["session"]["model"] == "voxgate/echo"
    name = "gpt-4o-realtime-preview-2024-12-17"
    async with http.post(
        f"{gw.base}/v1/realtime/sessions", json={"model": name}, headers=AUTH
    ) as r:
        assert r.status == 200
        beta = await r.json()
    SessionCreateResponse.model_validate_json(orjson.dumps(beta), strict=True)
    assert beta["model"] == name
    assert beta["input_audio_transcription"]["model"] == "pocketsphinx"
    ws = await http.ws_connect(
        gw.ws("/v1/realtime"),
        protocols=(
            "realtime",
            "openai-beta.realtime-v1",
            f"openai-insecure-api-key.{beta['client_secret']['value']}",
        ),
    )
    created = orjson.loads((await ws.receive()).data)
    assert created["session"]["model"] == name
    await ws.close()
    await settled(gw)


async def test_bare_names_relay_to_openai_where_configured(
    gateway: GatewayFactory, upstream: RecordingUpstream, http: aiohttp.ClientSession
) -> None:
    toml = (
        provider_overrides(upstream.url, "openai")
        + '[realtime]\nopenai_names = "relay"\n'
        + TOKENS
        + 'keys = { openai = { env = "K_OPENAI" } }\n'
    )
    gw = await gateway(toml, {"GW_TOKEN": TOKEN, "K_OPENAI": "sk-stored"})
    async with http.ws_connect(gw.ws("/v1/realtime?model=gpt-realtime"), headers=AUTH) as ws:
        await ws.send_str('{"type": "session.update", "session": {}}')
        echoed = await ws.receive(timeout=5)
        assert orjson.loads(echoed.data)["type"] == "session.update"
    hs = upstream.handshakes[0]
    assert hs.query_string == "model=gpt-realtime"
    assert hs.headers["authorization"] == "Bearer sk-stored"
    # a name that is no realtime model still runs the agent
    ws, _ = await connect(http, gw.ws("/v1/realtime?model=gpt-4o-mini"), headers=AUTH)
    await ws.close()
    # a relayed model cannot be bound to a client secret (the agent runs those sessions)
    body = {"session": {"type": "realtime", "model": "gpt-realtime"}}
    async with http.post(f"{gw.base}/v1/realtime/client_secrets", json=body, headers=AUTH) as r:
        assert r.status == 400
        assert "?model=gpt-realtime" in (await r.json())["error"]["message"]
    await settled(gw)
    async with http.get(f"{gw.base}/v1/local/default/logs", headers=AUTH) as r:
        records = (await r.json())["records"]
    ran = sorted((rec["provider"], rec["model"]) for rec in records)
    assert ran == [("openai", "gpt-realtime"), ("voxgate", "voxgate/echo")]


async def test_relay_mode_without_a_key_runs_the_agent(
    gateway: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    gw = await gateway('[realtime]\nopenai_names = "relay"\n')
    async with http.ws_connect(gw.ws("/v1/realtime?model=gpt-realtime")) as ws:
        created = orjson.loads((await ws.receive()).data)
        assert created["type"] == "session.created"
        assert created["session"]["model"] == "gpt-realtime"
