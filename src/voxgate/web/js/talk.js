// The Talk view: start and stop, the three connection modes, meters, transcript, errors.

import { MicError, openMic } from "./audio.js";
import { Conversation } from "./conversation.js";
import { OpenAiRtcTalk } from "./talk-openai-rtc.js";
import { WebRtcTalk } from "./talk-rtc.js";
import { WebSocketTalk } from "./talk-ws.js";

/** The connection modes (the radio buttons' values): what talks, and its name. */
const MODES = {
  ws: { Talk: WebSocketTalk, name: "WebSocket" },
  rtc: { Talk: WebRtcTalk, name: "WebRTC" },
  "openai-rtc": { Talk: OpenAiRtcTalk, name: "OpenAI WebRTC" },
};

const LISTENING = "Listening. Ask something; speak over the answer to interrupt it.";

export class TalkView {
  constructor(root) {
    this.root = root;
    this.form = root.querySelector("#talk-form");
    this.startButton = root.querySelector("#talk-start");
    this.stopButton = root.querySelector("#talk-stop");
    this.statusLine = root.querySelector("#talk-status");
    this.errorBox = root.querySelector("#talk-error");
    this.micMeter = root.querySelector("#mic-level");
    this.agentMeter = root.querySelector("#agent-level");
    this.voice = root.querySelector("#talk-voice");
    this.model = root.querySelector("#talk-model");
    this.conversation = new Conversation(root.querySelector("#transcript"));
    this.talk = null;
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.start();
    });
    this.stopButton.addEventListener("click", () => this.stop());
    this.errorBox.querySelector(".error-action").addEventListener("click", () => this.start());
  }

  /** The server's configuration arrived (voices, models, media apps). */
  configure(config) {
    this.config = config;
    const tts = config.engines.tts.find((e) => e.name === config.engines.default_tts);
    const current = this.voice.value;
    this.voice.replaceChildren(new Option("Default", ""));
    for (const v of (tts && tts.voices) || []) this.voice.add(new Option(v.name, v.id));
    this.voice.value = current;
    if (!this.model.value) this.model.value = config.realtime.default_model;
    const list = this.root.querySelector("#talk-models");
    const embedded = new Set([config.realtime.default_model, "voxgate/echo"]);
    list.replaceChildren(...[...embedded].map((name) => new Option(name)));
    for (const llm of config.llm) list.append(new Option(`${llm.name}/`));
  }

  mode() {
    return this.form.elements.mode.value;
  }

  set state(value) {
    this.root.dataset.state = value;
    const busy = value === "connecting" || value === "live";
    this.startButton.hidden = busy;
    this.stopButton.hidden = !busy;
    for (const input of this.form.querySelectorAll("input, select")) input.disabled = busy;
  }

  async start() {
    if (this.talk) return;
    this.hideError();
    this.state = "connecting";
    this.root.dataset.audioMs = "0";
    const mode = MODES[this.mode()];
    this.conversation.note(`New conversation (${mode.name})`);
    const talk = new mode.Talk(this.uiFor());
    this.talk = talk;
    try {
      this.status("Asking for the microphone…");
      this.mic = await openMic();
      this.ctx = new AudioContext();
      await this.ctx.resume();
      const app = ((this.config && this.config.apps) || []).find((a) => a.open);
      await talk.start(this.ctx, this.mic, {
        model: this.model.value.trim(),
        voice: this.voice.value,
        app: app && app.name,
      });
    } catch (err) {
      if (this.talk === talk) this.fail(err instanceof MicError ? err.message : err.message || String(err));
    }
  }

  stop() {
    const talk = this.talk;
    if (talk) talk.stop();
    this.release();
    this.state = "idle";
    this.status("Stopped. Press “Start talking” to talk again.");
  }

  release() {
    this.talk = null;
    if (this.mic) for (const track of this.mic.getTracks()) track.stop();
    this.mic = null;
    if (this.ctx) this.ctx.close();
    this.ctx = null;
    this.micMeter.value = 0;
    this.agentMeter.value = 0;
  }

  uiFor() {
    return {
      status: (text) => this.status(text),
      fail: (message) => this.fail(message),
      warn: (message) => this.warn(message),
      event: (event) => {
        this.conversation.handle(event);
        this.onEvent(event);
      },
      latency: (itemId, ms) => this.conversation.latency(itemId, ms),
      interrupted: (itemId, heardMs) => this.conversation.interrupted(itemId, heardMs),
      mic: (level) => (this.micMeter.value = Math.min(1, level * 4)),
      agent: (level) => (this.agentMeter.value = Math.min(1, level * 4)),
      played: (ms) => (this.root.dataset.audioMs = String(Math.round(ms))),
      session: (id) => {
        if (id) this.root.dataset.session = id;
        if (this.root.dataset.state !== "connecting") return;
        this.state = "live";
        this.status(LISTENING);
      },
      ended: () => {},
    };
  }

  /** What every mode shows of a Realtime event: the turn's stage and failed answers. */
  onEvent(event) {
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        this.status("Hearing you…");
        break;
      case "input_audio_buffer.speech_stopped":
        this.status("Thinking…");
        break;
      case "response.output_audio_transcript.delta":
        this.status("Answering. Speak to interrupt.");
        break;
      case "response.done": {
        const r = event.response || {};
        if (r.status === "failed") {
          const err = (r.status_details && r.status_details.error) || {};
          this.warn(
            `The agent could not answer: ${err.message || "its language model failed"}. Check that the model's server is running, or choose another model, then try again.`
          );
        }
        this.status(LISTENING);
        break;
      }
      default:
        break;
    }
  }

  status(text) {
    this.statusLine.textContent = text;
  }

  /** A problem that ends the conversation; the button offers to start again. */
  fail(message) {
    this.showError(message, "Start again");
    const talk = this.talk;
    this.release();
    if (talk) talk.stop(false);
    this.state = "error";
    this.status("Not connected.");
  }

  /** A problem with one turn; the conversation goes on. */
  warn(message) {
    this.showError(message, null);
  }

  showError(message, action) {
    this.errorBox.querySelector(".error-text").textContent = message;
    const button = this.errorBox.querySelector(".error-action");
    button.hidden = !action;
    button.textContent = action || "";
    this.errorBox.hidden = false;
  }

  hideError() {
    this.errorBox.hidden = true;
  }
}
