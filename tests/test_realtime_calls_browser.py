"""OpenAI's own browser code for the Realtime API over WebRTC, pointed at voxgate.

A page of another origin (an aiohttp app on its own port, as an application's site would
be) holds only the JavaScript OpenAI documents for WebRTC: a PeerConnection with the
microphone's track, the data channel ``oai-events``, the remote track played by an
``<audio>`` element, the SDP offer POSTed cross-origin to ``/v1/realtime/calls`` with
``Authorization: Bearer ek_…`` and ``Content-Type: application/sdp``, the answer set as
the remote description. The test mints the client secret (as the application's backend
would) and hands it to the page. Every data-channel event lands in ``window.events``.

Headless Chromium (Debian's ``chromium``, driven by Playwright) with a fake microphone
playing a WAV of real speech; skipped with the reason printed where either is missing,
as ``tests/test_page.py`` is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.conftest import GatewayFactory
from tests.test_page import CHROMIUM, QUESTION_WORDS
from tests.test_realtime_calls import transcript_of

from voxgate.bench.page import question_wav

from playwright.async_api import Error as PlaywrightError  # isort: skip (after the skip above)
from playwright.async_api import Page, async_playwright  # isort: skip

TOKEN = "browser-calls-token-0123"
TOKENS = '[accounts.local.gateways.default]\ntokens = [{ name = "site", env = "GW_TOKEN" }]\n'
ENV = {"GW_TOKEN": TOKEN}

Event = dict[str, Any]

#: The application's page: OpenAI's documented WebRTC code, nothing of voxgate's.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Realtime over WebRTC</title></head>
<body><script>
window.events = [];
window.times = [];
window.call = null;

// As OpenAI's WebRTC guide has it; the ephemeral key and the address come from the test
// instead of the application's own backend.
async function init(EPHEMERAL_KEY, baseUrl, model) {
  // Create a peer connection
  const pc = new RTCPeerConnection();
  window.pc = pc;

  // Set up to play remote audio from the model
  const audioElement = document.createElement("audio");
  audioElement.autoplay = true;
  window.audioElement = audioElement;
  pc.ontrack = (e) => (audioElement.srcObject = e.streams[0]);

  // Add local audio track for microphone input in the browser
  const ms = await navigator.mediaDevices.getUserMedia({ audio: true });
  pc.addTrack(ms.getTracks()[0]);

  // Set up data channel for sending and receiving events
  const dc = pc.createDataChannel("oai-events");
  window.dc = dc;
  dc.addEventListener("message", (e) => {
    window.events.push(JSON.parse(e.data));
    window.times.push(performance.now());
  });

  // Start the session using the Session Description Protocol (SDP)
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  const sdpResponse = await fetch(`${baseUrl}?model=${model}`, {
    method: "POST",
    body: offer.sdp,
    headers: {
      Authorization: `Bearer ${EPHEMERAL_KEY}`,
      "Content-Type": "application/sdp",
    },
  });
  window.call = { status: sdpResponse.status, location: sdpResponse.headers.get("Location") };
  const answer = { type: "answer", sdp: await sdpResponse.text() };
  await pc.setRemoteDescription(answer);
}
</script></body></html>
"""

#: What the remote audio track received, from the PeerConnection's statistics.
INBOUND = """async () => {
  for (const r of (await window.pc.getStats()).values()) {
    if (r.type === "inbound-rtp" && r.kind === "audio") {
      return { bytes: r.bytesReceived, packets: r.packetsReceived, energy: r.totalAudioEnergy || 0 };
    }
  }
  return null;
}"""

#: Where the call stands, for failure messages.
STATE = """() => ({
  call: window.call, events: window.events.map((e) => e.type),
  pc: window.pc && window.pc.connectionState, ice: window.pc && window.pc.iceConnectionState,
  dc: window.dc && window.dc.readyState,
})"""

Call = Callable[[Path], Awaitable[Page]]


@pytest.fixture
async def site() -> AsyncIterator[str]:
    """The application's origin: another port on 127.0.0.1 serving :data:`PAGE`."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def call(
    gateway: GatewayFactory, site: str, http: aiohttp.ClientSession
) -> AsyncIterator[Call]:
    """``await call(wav)``: the site's page in a fresh headless Chromium whose microphone
    plays ``wav``, its call placed to a voxgate that requires tokens, with a client
    secret minted by the site's backend (the test)."""
    gw = await gateway(TOKENS, ENV)
    async with async_playwright() as p:
        browsers = []

        async def start(wav: Path) -> Page:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--use-fake-device-for-media-stream",
                    "--use-fake-ui-for-media-stream",
                    f"--use-file-for-fake-audio-capture={wav}",
                    "--autoplay-policy=no-user-gesture-required",
                ],
            )
            browsers.append(browser)
            context = await browser.new_context()
            await context.grant_permissions(["microphone"], origin=site)
            page = await context.new_page()
            page.on("pageerror", lambda exc: print("page error:", exc))
            page.on("console", lambda msg: print("console:", msg.text))
            await page.goto(site + "/")
            body = {"expires_after": {"anchor": "created_at", "seconds": 600}, "session": {}}
            async with http.post(
                f"{gw.base}/v1/realtime/client_secrets",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as r:
                assert r.status == 200, await r.text()
                secret = (await r.json())["value"]
            try:
                await page.evaluate(
                    "([key, url, model]) => init(key, url, model)",
                    [secret, f"{gw.base}/v1/realtime/calls", "gpt-realtime"],
                )
            except PlaywrightError as exc:
                raise AssertionError(f"{exc.message}: {await page.evaluate(STATE)}") from None
            return page

        yield start
        for browser in browsers:
            await browser.close()


async def events_until(
    page: Page, done: Callable[[list[Event]], bool], within: float
) -> list[Event]:
    """``window.events`` once ``done`` accepts them; fails saying where the call stands."""
    try:
        async with asyncio.timeout(within):
            while True:
                events: list[Event] = await page.evaluate("() => window.events")
                if done(events):
                    return events
                await asyncio.sleep(0.25)
    except TimeoutError:
        raise AssertionError(f"not within {within} s: {await page.evaluate(STATE)}") from None


def find(events: list[Event], kind: str, **fields: Any) -> list[Event]:
    return [
        e for e in events if e["type"] == kind and all(e.get(k) == v for k, v in fields.items())
    ]


def responses(events: list[Event], status: str) -> list[Event]:
    return [e for e in find(events, "response.done") if e["response"]["status"] == status]


def heard_question(events: list[Event]) -> bool:
    return any(
        any(w in e["transcript"] for w in QUESTION_WORDS)
        for e in find(events, "conversation.item.input_audio_transcription.completed")
    )


def spoken_through(events: list[Event]) -> Event | None:
    """The first completed spoken answer whose audio has stopped playing out."""
    for done in responses(events, "completed"):
        if transcript_of(done) and find(
            events, "output_audio_buffer.stopped", response_id=done["response"]["id"]
        ):
            return done
    return None


async def test_openai_browser_code_talks_to_voxgate(call: Call, tmp_path: Path) -> None:
    page = await call(question_wav(tmp_path / "question.wav", silence_s=9))
    events = await events_until(page, lambda es: bool(find(es, "session.created")), 15)
    assert events[0]["type"] == "session.created", [e["type"] for e in events]
    placed = await page.evaluate("() => window.call")
    assert placed["status"] == 201
    # the Location header is exposed to the page's origin
    assert placed["location"].startswith("/v1/realtime/calls/"), placed

    events = await events_until(
        page, lambda es: heard_question(es) and spoken_through(es) is not None, 60
    )
    done = spoken_through(events)
    assert done is not None
    assert any(w in transcript_of(done) for w in QUESTION_WORDS), done  # the echo model
    rid = done["response"]["id"]
    started = find(events, "output_audio_buffer.started", response_id=rid)
    stopped = find(events, "output_audio_buffer.stopped", response_id=rid)
    assert started, [e["type"] for e in events]
    assert events.index(started[0]) < events.index(stopped[0])
    types = [e["type"] for e in events]
    assert "response.output_audio_transcript.delta" in types
    assert "response.output_audio.delta" not in types  # the audio is on the track

    inbound = await page.evaluate(INBOUND)
    assert inbound is not None, await page.evaluate(STATE)
    assert inbound["bytes"] > 10_000, inbound  # seconds of Opus, not comfort noise
    assert inbound["energy"] > 0, inbound
    assert await page.evaluate("() => window.audioElement.srcObject !== null")


async def test_speaking_over_the_answer_cuts_it(call: Call, tmp_path: Path) -> None:
    # the question, and 3 s after it again: over the answer (about 4.5 s long)
    wav = question_wav(tmp_path / "twice.wav", silence_s=9, interrupt_after=3.0)
    page = await call(wav)

    def cut_and_answered(es: list[Event]) -> bool:
        return bool(find(es, "output_audio_buffer.cleared") and spoken_through(es))

    events = await events_until(page, cut_and_answered, 60)
    times: list[float] = await page.evaluate("() => window.times")
    cleared = find(events, "output_audio_buffer.cleared")[0]
    cut_id = cleared["response_id"]
    cut = find(events, "response.output_item.added", response_id=cut_id)
    assert cut, [e["type"] for e in events]
    item_id = cut[0]["item"]["id"]
    truncated = find(events, "conversation.item.truncated", item_id=item_id)
    assert truncated, find(events, "conversation.item.truncated")
    assert truncated[0]["content_index"] == 0
    heard_ms = truncated[0]["audio_end_ms"]

    # the whole answer (to the second question: the same words) played for this long
    full = spoken_through(events)
    assert full is not None
    rid = full["response"]["id"]
    began = events.index(find(events, "output_audio_buffer.started", response_id=rid)[0])
    ended = events.index(find(events, "output_audio_buffer.stopped", response_id=rid)[0])
    full_ms = times[ended] - times[began]
    assert 0 < heard_ms < full_ms, (heard_ms, full_ms)

    # what the conversation keeps of the cut answer is only what was heard. If the cut
    # came while the answer was still being generated, its response ends cancelled with
    # that transcript; if it came after response.done (generation runs ahead of the
    # play-out, as on OpenAI), the item is truncated afterwards: read it back.
    done = [e for e in find(events, "response.done") if e["response"]["id"] == cut_id]
    assert done, [e["type"] for e in events]
    if done[0]["response"]["status"] != "completed":
        assert done[0]["response"]["status"] == "cancelled", done[0]
        assert len(transcript_of(done[0])) < len(transcript_of(full)), (done[0], full)
    mark = len(events)
    retrieve = {"type": "conversation.item.retrieve", "item_id": item_id}
    await page.evaluate("(e) => window.dc.send(JSON.stringify(e))", retrieve)

    def retrieved(es: list[Event]) -> bool:
        return bool(find(es[mark:], "conversation.item.retrieved"))

    events = await events_until(page, retrieved, 20)
    item = find(events[mark:], "conversation.item.retrieved")[0]["item"]
    heard = item["content"][0]["transcript"]
    assert heard, item
    assert len(heard) < len(transcript_of(full)), (heard, full)
