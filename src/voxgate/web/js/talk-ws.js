// Talk over the OpenAI Realtime protocol on a WebSocket, authenticated with a client
// secret that lasts one minute (minted by POST /v1/realtime/client_secrets), so the page
// never holds a long-lived token. Microphone audio goes up as input_audio_buffer.append
// (PCM16 at the session rate); answer audio is played as its deltas arrive; when the
// server hears the person start speaking, playback stops and the unheard part of the
// answer is truncated, as OpenAI's own clients do.

import { clientSecret, closeReason, whyFailed, wsUrl } from "./api.js";
import { Player, TurnClock, base64ToBytes, bytesToBase64, startCapture } from "./audio.js";

const RATE = 24000;
const SECRET_SECONDS = 60;
const LIMIT_ERRORS = ["session_too_long", "rate_limited", "message_too_large", "idle_timeout"];

export class WebSocketTalk {
  /** `ui`: {status(text), fail(message) (ends the talk), warn(message), event(realtimeEvent),
   * latency(itemId, ms), interrupted(itemId, heardMs),
   * mic(level), agent(level), played(ms), session(id), ended()} */
  constructor(ui) {
    this.ui = ui;
    this.ws = null;
    this.stopped = false;
    this.opened = false;
    this.clock = new TurnClock();
    this.playing = null; // {itemId, firstAt} of the answer being played
  }

  async start(ctx, mic, { model, voice }) {
    this.ctx = ctx;
    this.player = new Player(ctx);
    const session = {
      type: "realtime",
      audio: {
        input: { format: { type: "audio/pcm", rate: RATE } },
        output: { format: { type: "audio/pcm", rate: RATE } },
      },
    };
    if (model) session.model = model;
    if (voice) session.audio.output.voice = voice;
    this.ui.status("Getting a short-lived client secret…");
    const secret = await clientSecret(session, SECRET_SECONDS);
    this.ui.status("Connecting…");
    const ws = new WebSocket(wsUrl("/v1/realtime"), ["realtime", `openai-insecure-api-key.${secret.value}`]);
    this.ws = ws;
    ws.onmessage = (e) => this.onEvent(JSON.parse(e.data));
    ws.onclose = (e) => this.onClose(e);
    await new Promise((resolve) => {
      ws.onopen = () => {
        this.opened = true;
        resolve();
      };
      ws.addEventListener("close", resolve);
    });
    if (!this.opened) return;
    this.stopCapture = await startCapture(ctx, mic, RATE, (pcm, level) => {
      this.clock.mic(level);
      this.ui.mic(level);
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: bytesToBase64(pcm) }));
      }
    });
    this.meter = setInterval(() => {
      this.ui.agent(this.player.level());
      this.ui.played(this.player.playedMs);
    }, 100);
  }

  onEvent(event) {
    switch (event.type) {
      case "session.created":
        this.ui.session(event.session && event.session.id);
        break;
      case "input_audio_buffer.speech_started":
        this.bargeIn();
        this.clock.started();
        break;
      case "input_audio_buffer.speech_stopped":
        this.clock.stopped();
        break;
      case "response.output_audio.delta": {
        const at = this.player.play(base64ToBytes(event.delta), RATE);
        if (at === null) break;
        if (!this.playing || this.playing.itemId !== event.item_id) {
          this.playing = { itemId: event.item_id, firstAt: at };
          const ms = this.clock.answer(at);
          if (ms !== null) this.ui.latency(event.item_id, ms);
        }
        break;
      }
      case "error": {
        const err = event.error || {};
        const message = err.message || err.code || "unknown error";
        // A limit's error comes just before the server closes: said with the close.
        if (LIMIT_ERRORS.includes(err.code)) this.limitMessage = message;
        else this.ui.warn(`The server reported a problem: ${message}`);
        break;
      }
      default:
        break;
    }
    this.ui.event(event);
  }

  /** The person talks over the answer: stop playing, and tell the server how much of
   * the answer was heard so its transcript matches. */
  bargeIn() {
    const p = this.playing;
    const pending = this.player.pending;
    this.player.interrupt();
    if (p && pending > 0 && this.ws && this.ws.readyState === WebSocket.OPEN) {
      const heard = Math.max(0, Math.round(performance.now() - p.firstAt));
      this.ws.send(
        JSON.stringify({ type: "conversation.item.truncate", item_id: p.itemId, content_index: 0, audio_end_ms: heard })
      );
      this.ui.interrupted(p.itemId, heard);
    }
    this.playing = null;
  }

  async onClose(e) {
    this.cleanup();
    if (this.stopped) return;
    if (!this.opened) {
      const refused =
        "The server refused the connection: the client secret may have expired, or the server is at its connection limit. Press Start to try again.";
      this.ui.fail(await whyFailed(refused, "press Start"));
      return;
    }
    const reason = closeReason(e.code);
    if (reason) {
      const detail = this.limitMessage ? ` (${this.limitMessage})` : "";
      this.ui.fail(`${reason}${detail} Press Start to begin a new session.`);
    } else if (e.code === 1000) {
      this.ui.fail("The server ended the session. Press Start to begin a new one.");
    } else {
      this.ui.fail(await whyFailed("The connection to the server dropped. Press Start to reconnect.", "press Start"));
    }
  }

  cleanup() {
    if (this.stopCapture) this.stopCapture();
    this.stopCapture = null;
    clearInterval(this.meter);
    if (this.player) this.player.interrupt();
    this.ui.ended();
  }

  stop() {
    this.stopped = true;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "bye");
    this.cleanup();
  }
}
