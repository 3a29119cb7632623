from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from voxgate.config import load_settings
from voxgate.core.realtime.deps import AgentDeps
from voxgate.engines.base import VoiceActivity
from voxgate.engines.llm import EchoModel
from voxgate.engines.registry import EngineRegistry
from voxgate.server.app import create_app
from voxgate.server.services import SERVICES, Services
from voxgate.settings import EngineSettings, Settings, SpeechSettings
from voxgate.testing import RecordingUpstream
from voxgate.testing.canary import Canary, CanaryResult


@dataclass
class Gateway:
    """A voxgate server running on 127.0.0.1 for one test."""

    port: int
    services: Services
    runner: web.AppRunner

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        await self.runner.cleanup()


GatewayFactory = Callable[..., Awaitable[Gateway]]


#: What the agent runs when a test names no model: the echo, whose answers tests can
#: predict, unless a test asks for the server's own default (``voxgate/local`` when
#: installed) or sets ``default_model`` itself.
ECHO_DEFAULT = {"VOXGATE_REALTIME__DEFAULT_MODEL": "voxgate/echo"}


def make_settings(
    toml: str, tmp_path: Path, env: Mapping[str, str] | None = None, *, echo: bool = True
) -> Settings:
    cfg = tmp_path / "voxgate.toml"
    store = tmp_path / "usage.db"
    cfg.write_text(f'[store]\nurl = "sqlite:///{store}"\n' + toml)
    defaults = ECHO_DEFAULT if echo and "default_model" not in toml else {}
    return load_settings(cfg, {**defaults, **(env or {})})


@pytest.fixture(scope="session")
def speech_engines() -> EngineRegistry:
    """One engine registry for the whole run: models load once, as in a server process.

    Piper without noise: its noise generator is seeded per process and advanced by every
    synthesis, so with noise what one test hears would depend on the tests before it.
    """
    piper = EngineSettings("piper", "piper", {"noise_scale": 0.0, "noise_w_scale": 0.0})
    return EngineRegistry(
        SpeechSettings(cache_dir=str(Path.home() / ".cache" / "voxgate"), engines={"piper": piper})
    )


def echo_deps(engines: EngineRegistry, make_vad: Callable[[], VoiceActivity]) -> AgentDeps:
    """What a voice session with no server uses: ``engines``' piper and pocketsphinx,
    ``make_vad``'s VAD, and the echo model."""
    return AgentDeps(
        workers=engines.workers,
        get_tts=engines.tts,
        get_stt=engines.stt,
        make_vad=make_vad,
        resolve_model=lambda _model: EchoModel(),
        tts_names=("piper",),
        stt_names=("pocketsphinx",),
        default_tts="piper",
        default_stt="pocketsphinx",
    )


@pytest.fixture
async def gateway(tmp_path: Path, speech_engines: EngineRegistry) -> AsyncIterator[GatewayFactory]:
    started: list[Gateway] = []

    async def start(
        toml: str = "",
        env: Mapping[str, str] | None = None,
        *,
        own_engines: bool = False,
        echo: bool = True,
    ) -> Gateway:
        settings = make_settings(toml, tmp_path, env, echo=echo)
        app = create_app(settings, engines=None if own_engines else speech_engines)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        gw = Gateway(runner.addresses[0][1], app[SERVICES], runner)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    async with RecordingUpstream() as up:
        yield up


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as cs:
        yield cs


#: The headers of a WebSocket upgrade, for tests that send one as a plain HTTP request to
#: read the answer's status and JSON body.
UPGRADE_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def provider_overrides(url: str, *names: str) -> str:
    """TOML pointing built-in providers at a test upstream (keeping their base path)."""
    return "".join(f'[providers.{n}]\nurl = "{url}/{n}"\n' for n in names)


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (tests only: the server has no event for
    "every handler finished", and adding one just for tests would be worse)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def settled(gw: Gateway) -> None:
    """Wait until every session has ended and its usage record is written."""
    await asyncio.sleep(0)
    await wait_for(
        lambda: (
            not gw.services.live
            and not gw.services.live_speech
            and not gw.services.sessions
            and not gw.services.pending_writes
        )
    )
    # a handler between its close and its record write is in neither set for one turn
    await asyncio.sleep(0.05)
    await wait_for(lambda: not gw.services.pending_writes)


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    """A healthy relay client in a process of its own (see :mod:`voxgate.testing.canary`):
    start the gateway with ``canary.provider_toml()``, then ``canary.begin(...)``."""
    async with await Canary.start() as c:
        yield c


def canary_url(gw: Gateway) -> str:
    return gw.ws("/v1/local/default/canary")


CANARY_P99_MS = 50.0


def assert_healthy(result: CanaryResult, *, p99_ms: float = CANARY_P99_MS) -> None:
    """The canary got every echo, and 99 % of them within ``p99_ms``."""
    print(result.summary())
    assert not result.errors, result.summary()
    assert len(result.rtts_ms) >= 10, result.summary()
    assert result.p99 < p99_ms, result.summary()


@pytest.fixture
def tracebacks(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """``tracebacks()``: each log record of voxgate's that carried an exception."""
    caplog.set_level(logging.WARNING, logger="voxgate")

    def found() -> list[str]:
        return [
            f"{r.name}: {r.getMessage()} ({r.exc_info[0].__name__ if r.exc_info[0] else ''})"
            for r in caplog.records
            if r.exc_info is not None and r.name.startswith("voxgate")
        ]

    return found


@pytest.fixture(autouse=True)
def official_realtime_events(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every realtime server event a test makes voxgate render must parse with the
    official ``openai`` types (see :mod:`official_types`); checked at teardown."""
    from voxgate.protocols.realtime.protocol import RealtimeProtocol

    rendered: list[tuple[bool, str]] = []
    render = RealtimeProtocol.event

    def recording(self: RealtimeProtocol, kind: str, **fields: Any) -> str:
        text = render(self, kind, **fields)
        rendered.append((self.beta, text))
        return text

    monkeypatch.setattr(RealtimeProtocol, "event", recording)
    yield
    if rendered:
        from official_types import problems

        refused = problems(rendered)
        if refused:
            pytest.fail(
                f"{len(refused)} kind(s) of server event the official openai types refuse:\n\n"
                + "\n\n".join(refused),
                pytrace=False,
            )


@pytest.fixture
def certificate(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate for 127.0.0.1 and its key (skips without openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
