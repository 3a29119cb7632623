"""The browser page in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, its microphone a fake device playing a WAV of real speech.

Screenshots of each view go to ``artifacts/page/`` (``VOXGATE_ARTIFACTS`` overrides).
Without the browser or Playwright these tests are skipped with the reason printed
(``make test`` installs both where it can).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Gateway, GatewayFactory, provider_overrides

from voxgate.bench.page import question_wav
from voxgate.testing import RecordingUpstream

try:
    from playwright.async_api import Browser, Page, Response, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    pytest.skip("playwright is not installed (pip install playwright)", allow_module_level=True)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:  # pragma: no cover - depends on the machine
    pytest.skip(
        "no system Chromium (Debian: apt-get install chromium); browser tests skipped",
        allow_module_level=True,
    )

DATA = Path(__file__).parent / "data"
ARTIFACTS = Path(os.environ.get("VOXGATE_ARTIFACTS", Path(__file__).parent.parent / "artifacts"))
QUESTION_WORDS = ("superlative",)  # arctic_a0007: "…see it in the superlative degree"
TALK_SECONDS = 90.0  # a slow 2-core machine under the whole suite took over 40 s once

Launch = Callable[..., Awaitable[Page]]

#: Visible text whose contrast with its background is under 4.5:1, as "TAG#id.class: ratio".
CONTRAST = """() => {
          const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
          const lum = ([r, g, b]) => {
            const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
            return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
          };
          const background = (e) => {
            for (; e; e = e.parentElement) {
              const c = rgb(getComputedStyle(e).backgroundColor);
              if (c.length < 4 || c[3] > 0) return c;
            }
            return [255, 255, 255];
          };
          const out = [];
          for (const e of document.querySelectorAll('body *')) {
            const text = [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
            if (!text || !e.offsetParent || e.disabled) continue;
            const a = lum(rgb(getComputedStyle(e).color)), b = lum(background(e));
            const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
            if (ratio < 4.5) out.push(`${e.tagName}#${e.id}.${e.className}: ${ratio.toFixed(2)}`);
          }
          return out;
        }"""


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launch]:
    """``await launch(gw, microphone=True)``: a page of ``gw`` in a fresh headless
    Chromium; ``microphone=False`` gives a browser that denies the microphone, ``wav``
    another file for the fake microphone."""
    question = question_wav(tmp_path / "question.wav", silence_s=9)
    browsers: list[Browser] = []
    async with async_playwright() as p:

        async def start(gw: Gateway, *, microphone: bool = True, wav: Path | None = None) -> Page:
            wav = wav or question
            args = [
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
            ]
            if microphone:
                args += [
                    "--use-fake-ui-for-media-stream",
                    f"--use-file-for-fake-audio-capture={wav}",
                ]
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=args)
            browsers.append(browser)
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            if microphone:
                await context.grant_permissions(["microphone"], origin=gw.base)
            page = await context.new_page()
            page.on("pageerror", lambda exc: print("page error:", exc))
            await page.goto(gw.base + "/")
            await until(page, "() => document.querySelector('#version').textContent !== ''")
            return page

        yield start
        for browser in browsers:
            await browser.close()


async def until(page: Page, condition: str, within: float = 10.0) -> None:
    """Wait until the JavaScript function ``condition`` returns true in the page.

    (Playwright's ``wait_for_function`` evaluates strings, which the page's CSP forbids.)"""
    async with asyncio.timeout(within):
        while not await page.evaluate(condition):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.joinpath("page").mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "page" / f"{name}.png"), full_page=True)


async def talk_state(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(
        """() => {
          const v = document.querySelector('#view-talk');
          const err = document.querySelector('#talk-error');
          return {
            state: v.dataset.state, audioMs: Number(v.dataset.audioMs || 0),
            rtc: v.dataset.rtc || null,
            session: v.dataset.session || null,
            user: [...document.querySelectorAll('#transcript li.user .text')].map(e => e.textContent),
            agent: [...document.querySelectorAll('#transcript li.assistant .text')].map(e => e.textContent),
            latency: [...document.querySelectorAll('#transcript .latency')].map(e => Number(e.dataset.ms)),
            error: err.hidden ? null : err.querySelector('.error-text').textContent,
          };
        }"""
    )
    return state


async def talk_until_answered(page: Page, mode: str) -> dict[str, Any]:
    """Start talking in ``mode``; return the view's state once the agent's answer to the
    spoken question was heard (its transcript shown and over a second of audio played)."""
    await page.check(f"input[name=mode][value={mode}]")
    await page.click("#talk-start")
    state: dict[str, Any] = {}
    try:
        async with asyncio.timeout(TALK_SECONDS):
            while True:
                state = await talk_state(page)
                assert state["error"] is None, state
                heard = any(w in " ".join(state["user"]) for w in QUESTION_WORDS)
                if heard and state["agent"] and state["audioMs"] > 1000 and state["latency"]:
                    return state
                await asyncio.sleep(0.25)
    except TimeoutError:
        # the page's last state says how far it got (WebRTC modes: each connection
        # state the PeerConnection went through, as "connectionState/iceConnectionState")
        raise AssertionError(f"no answer heard within {TALK_SECONDS:.0f} s: {state}") from None


async def show_gateway(page: Page, session: str) -> None:
    await page.click("#tab-gateway")
    await page.wait_for_selector(f'#live tr[data-session="{session}"]', timeout=10_000)


async def test_talk_over_websocket(gateway: GatewayFactory, launch: Launch) -> None:
    gw = await gateway()
    page = await launch(gw)
    await screenshot(page, "talk-idle")
    state = await talk_until_answered(page, "ws")
    assert state["session"].startswith("sess_")
    # the echo model says what it heard (a turn may have been split: any answer will do)
    assert any("superlative" in a for a in state["agent"]), state
    assert 0 < state["latency"][0] < 10_000
    # the client secret, never a gateway token: the page minted one and used it
    assert gw.services.client_secrets is not None
    await screenshot(page, "talk-websocket")

    await show_gateway(page, state["session"])
    row = await page.inner_text(f'#live tr[data-session="{state["session"]}"]')
    assert "realtime" in row
    assert "voxgate/echo" in row
    await screenshot(page, "gateway")

    await page.click("#tab-talk")
    await page.click("#talk-stop")
    await page.click("#tab-gateway")
    usage = f'#usage tr[data-session="{state["session"]}"]'
    await page.wait_for_selector(usage, timeout=10_000)
    assert "realtime" in await page.inner_text(usage)
    await page.wait_for_selector(f'#live tr[data-session="{state["session"]}"]', state="detached")


async def test_talk_through_the_media_server(gateway: GatewayFactory, launch: Launch) -> None:
    gw = await gateway()
    page = await launch(gw)
    state = await talk_until_answered(page, "rtc")
    # the connection's states are on the page for a failure's message to show
    assert "connected/connected" in (state["rtc"] or ""), state
    agent_id = state["session"]
    assert agent_id in gw.services.media.agents, state
    assert any("superlative" in a for a in state["agent"]), state
    await screenshot(page, "talk-webrtc")
    await show_gateway(page, agent_id)
    assert "agent" in await page.inner_text(f'#live tr[data-session="{agent_id}"]')
    summary = await page.inner_text("#media-summary")
    assert "1 agent" in summary
    assert "WebRTC session" in summary
    await page.click("#tab-talk")
    await page.click("#talk-stop")
    async with asyncio.timeout(10):
        while agent_id in gw.services.media.agents:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_talk_over_openai_webrtc(gateway: GatewayFactory, launch: Launch) -> None:
    gw = await gateway()
    page = await launch(gw)
    posted: list[tuple[str, int]] = []  # (address, status) of each POST the page made

    def on_response(response: Response) -> None:
        if response.request.method == "POST":
            posted.append((response.url, response.status))

    page.on("response", on_response)
    state = await talk_until_answered(page, "openai-rtc")
    call_id = state["session"]  # session.created names the call: rtc_…
    assert any("superlative" in a for a in state["agent"]), state
    assert 0 < state["latency"][0] < 10_000
    # the page minted a client secret, then placed the call with it
    paths = [url.removeprefix(gw.base) for url, _ in posted]
    assert paths[:2] == ["/v1/realtime/client_secrets", "/v1/realtime/calls"], posted
    assert [status for _, status in posted[:2]] == [200, 201], posted
    await screenshot(page, "talk-openai-webrtc")

    await show_gateway(page, call_id)
    row = await page.inner_text(f'#live tr[data-session="{call_id}"]')
    assert "realtime" in row
    assert "voxgate/echo" in row
    # Stop hangs the call up (POST {Location}/hangup) and it ends on the gateway
    await page.click("#tab-talk")
    await page.click("#talk-stop")
    await page.click("#tab-gateway")
    await page.wait_for_selector(f'#live tr[data-session="{call_id}"]', state="detached")
    usage = f'#usage tr[data-session="{call_id}"]'
    await page.wait_for_selector(usage, timeout=10_000)
    assert "realtime" in await page.inner_text(usage)
    hangups = [(url, status) for url, status in posted if url.endswith("/hangup")]
    assert hangups == [(f"{gw.base}/v1/realtime/calls/{call_id}/hangup", 200)], posted


async def test_speak_and_listen(gateway: GatewayFactory, launch: Launch) -> None:
    gw = await gateway()
    page = await launch(gw)
    await page.click("#tab-speak")
    voices = await page.eval_on_selector_all("#tts-voice option", "os => os.map(o => o.value)")
    assert "en_US-joe-medium" in voices
    await page.select_option("#tts-voice", "en_US-joe-medium")
    await page.fill("#tts-text", "The birch canoe slid on the smooth planks.")
    await page.click("#tts-speak")
    await until(
        page, "() => document.querySelector('#tts-status').textContent.startsWith('Done')", 20
    )
    assert int(await page.get_attribute("#view-speak", "data-tts-ms") or 0) > 1000

    await page.select_option("#stt-engine", "whisper")
    await page.set_input_files("#stt-file", str(DATA / "arctic_a0007.wav"))
    await until(
        page, "() => document.querySelector('#stt-status').textContent.startsWith('Done')", 60
    )
    # whisper base hears the last word as "superlative" or, with the short window (and
    # on this file decoded whole, either window), "separative": the page's part is the rest
    heard = (await page.inner_text("#stt-result")).lower()
    assert heard.count("you always want to see it in the") == 1, heard
    await screenshot(page, "speak-listen")

    # not audio at all: said in words, nothing sent
    await page.set_input_files(
        "#stt-file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}]
    )
    await until(
        page, "() => document.querySelector('#stt-status').textContent.includes('not audio')"
    )


RELAY_TOKEN = "browser-relay-token-1234"


async def test_relay_from_the_browser_with_a_subprotocol_token(
    gateway: GatewayFactory, launch: Launch
) -> None:
    async with RecordingUpstream() as up:
        gw = await gateway(
            provider_overrides(up.url, "openai") + "[accounts.acme.gateways.web]\n"
            'tokens = [{ name = "browser", env = "WEB_TOKEN" }]\n'
            'keys = { openai = { env = "K_OPENAI" } }\n',
            env={"WEB_TOKEN": RELAY_TOKEN, "K_OPENAI": "sk-stored-key"},
        )
        page = await launch(gw)
        script = """async ([url, token]) => new Promise((resolve) => {
              const ws = new WebSocket(url, ['realtime', 'voxgate-authorization.' + token]);
              ws.onopen = () => ws.send(JSON.stringify({type: 'hello'}));
              ws.onmessage = (e) => { ws.close(1000); resolve({opened: true, echo: e.data, protocol: ws.protocol}); };
              ws.onclose = (e) => resolve({opened: false, code: e.code});
            })"""
        url = gw.ws("/v1/acme/web/openai?model=gpt-realtime")
        ok = await page.evaluate(script, [url, RELAY_TOKEN])
        assert ok == {"opened": True, "echo": '{"type":"hello"}', "protocol": "realtime"}
        hs = up.handshakes[0]
        assert hs.headers.get("authorization") == "Bearer sk-stored-key"
        assert RELAY_TOKEN not in repr(hs.headers) + repr(hs.subprotocols) + hs.query_string

        refused = await page.evaluate(script, [url, "wrong-token"])
        assert refused == {"opened": False, "code": 1006}
        assert len(up.handshakes) == 1  # nothing reached the provider
        # the page itself is still fine
        assert await page.evaluate("fetch('/healthz').then(r => r.status)") == 200


async def test_microphone_denied(gateway: GatewayFactory, launch: Launch) -> None:
    gw = await gateway()
    page = await launch(gw, microphone=False)
    await page.click("#talk-start")
    await page.wait_for_selector("#talk-error:not([hidden])")
    text = await page.inner_text("#talk-error")
    assert "Microphone access was denied" in text
    assert "Start again" in text
    assert await page.get_attribute("#view-talk", "data-state") == "error"
    await screenshot(page, "error-microphone-denied")


async def test_server_gone(gateway: GatewayFactory, launch: Launch) -> None:
    gw = await gateway()
    page = await launch(gw)
    await gw.stop()
    await page.click("#talk-start")
    await page.wait_for_selector("#talk-error:not([hidden])")
    assert "cannot be reached" in await page.inner_text("#talk-error")
    await page.click("#tab-gateway")
    await page.wait_for_selector("#banner:not([hidden])")
    assert "make run" in await page.inner_text("#banner")
    await screenshot(page, "error-server-gone")


async def test_session_time_limit(gateway: GatewayFactory, launch: Launch) -> None:
    gw = await gateway("[accounts.local.gateways.default]\nlimits = { max_session_seconds = 3 }\n")
    page = await launch(gw)
    await page.click("#talk-start")
    await page.wait_for_selector("#talk-error:not([hidden])", timeout=15_000)
    text = await page.inner_text("#talk-error")
    assert "time limit" in text
    assert "3 s per session" in text
    assert "Start again" in text
    await screenshot(page, "error-session-expired")


async def test_upstream_model_error(gateway: GatewayFactory, launch: Launch) -> None:
    gw = await gateway('[llm.down]\nbase_url = "http://127.0.0.1:9/v1"\n')
    page = await launch(gw)
    await page.fill("#talk-model", "down/any-model")
    await page.click("#talk-start")
    await page.wait_for_selector("#talk-error:not([hidden])", timeout=TALK_SECONDS * 1000)
    text = await page.inner_text("#talk-error")
    assert "The agent could not answer" in text
    assert "model" in text
    assert await page.get_attribute("#view-talk", "data-state") == "live"  # the talk goes on
    await screenshot(page, "error-upstream")


@pytest.mark.parametrize("mode", ["ws", "openai-rtc"])
async def test_speaking_over_the_answer_interrupts_it(
    gateway: GatewayFactory, launch: Launch, tmp_path: Path, mode: str
) -> None:
    gw = await gateway()
    wav = question_wav(tmp_path / "twice.wav", silence_s=9, interrupt_after=1.5)
    page = await launch(gw, wav=wav)
    await page.check(f"input[name=mode][value={mode}]")
    await page.click("#talk-start")
    cut = "#transcript li.assistant.interrupted[data-truncated-ms]"
    await page.wait_for_selector(cut, timeout=TALK_SECONDS * 1000)
    heard = int(await page.get_attribute(cut, "data-truncated-ms") or -1)
    assert 0 <= heard < 3000  # the answer is over 4 s long: the rest was not played
    assert "Interrupted after" in await page.inner_text(cut)
    # the second question is heard and answered in turn
    await page.wait_for_selector(
        "#transcript li.assistant:not(.interrupted) .latency", timeout=30_000
    )
    await screenshot(page, f"talk-interrupted-{mode}")


async def test_page_is_usable_by_keyboard_and_labelled(
    gateway: GatewayFactory, launch: Launch
) -> None:
    gw = await gateway()
    page = await launch(gw, microphone=False)
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button, meter, output')]
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                           && !e.getAttribute('aria-labelledby') && !e.textContent.trim())
              .map(e => e.outerHTML)"""
    )
    assert unlabelled == []
    # the tabs follow the WAI-ARIA pattern: arrows move, the panel follows
    await page.focus("#tab-talk")
    await page.keyboard.press("ArrowRight")
    assert await page.evaluate("() => document.activeElement.id") == "tab-speak"
    assert await page.is_visible("#view-speak")
    assert not await page.is_visible("#view-talk")
    await page.keyboard.press("End")
    assert await page.get_attribute("#tab-gateway", "aria-selected") == "true"
    await page.keyboard.press("Home")
    assert await page.is_visible("#view-talk")
    # text contrast: at least 4.5:1 against the background it is drawn on (WCAG AA);
    # a grey probe paragraph shows the check can fail
    await page.evaluate(
        """() => { const p = document.createElement('p'); p.id = 'probe';
                   p.style.color = '#bbbbbb'; p.textContent = 'probe';
                   document.querySelector('main').append(p); }"""
    )
    assert await page.evaluate(CONTRAST) == ["P#probe.: 1.92"]
    await page.evaluate("() => document.querySelector('#probe').remove()")
    low = await page.evaluate(CONTRAST)
    assert low == []
