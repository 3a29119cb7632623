// Speak / listen: text to speech and a recording to text, through the unified speech
// protocol (ws /v1/tts/{engine}, ws /v1/stt/{engine}), the same for every engine.

import { closeReason, whyFailed, wsUrl } from "./api.js";
import { Player } from "./audio.js";

const TTS_RATE = 24000;
const STT_RATE = 16000;
const STT_CHUNK_MS = 100;
const MAX_FILE_BYTES = 50 * 1024 * 1024;

/** Open a speech WebSocket; resolves once open, rejects with words when it cannot. */
function connect(path) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(path));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve(ws);
    ws.onerror = async () => {
      const refused = "The server refused the connection (a gateway token may be required, or it is at its connection limit).";
      reject(new Error(await whyFailed(refused, "retry")));
    };
  });
}

/** Why a speech socket closed, in words, or "" for a normal end. */
function ended(e, lastError) {
  if (lastError) return lastError;
  if (e.code === 1000) return "";
  return closeReason(e.code) || "The connection to the server dropped before the end.";
}

export class SpeakView {
  constructor(root) {
    this.root = root;
    this.engines = { tts: [], stt: [] };
    this.ttsEngine = root.querySelector("#tts-engine");
    this.ttsVoice = root.querySelector("#tts-voice");
    this.ttsStatus = root.querySelector("#tts-status");
    this.sttStatus = root.querySelector("#stt-status");
    this.sttResult = root.querySelector("#stt-result");
    root.querySelector("#tts-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.speak();
    });
    root.querySelector("#tts-stop").addEventListener("click", () => this.stopSpeaking());
    this.ttsEngine.addEventListener("change", () => this.fillVoices());
    const file = root.querySelector("#stt-file");
    file.addEventListener("change", () => file.files[0] && this.transcribe(file.files[0]));
    const drop = root.querySelector("#drop");
    drop.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const dropped = e.dataTransfer.files[0];
      if (dropped) this.transcribe(dropped);
    });
  }

  configure(config) {
    const e = config.engines;
    this.engines = e;
    const fill = (select, list, preferred) => {
      const current = select.value;
      select.replaceChildren(
        ...list.map((x) => {
          const o = new Option(x.available === false ? `${x.name} (unavailable)` : x.name, x.name);
          o.disabled = x.available === false;
          return o;
        })
      );
      select.value = current || preferred;
    };
    fill(this.ttsEngine, e.tts, e.default_tts);
    fill(this.root.querySelector("#stt-engine"), e.stt, e.default_stt);
    this.fillVoices();
  }

  fillVoices() {
    const engine = this.engines.tts.find((x) => x.name === this.ttsEngine.value);
    const voices = (engine && engine.voices) || [];
    this.ttsVoice.replaceChildren(new Option("Engine default", ""), ...voices.map((v) => new Option(`${v.name} (${v.language})`, v.id)));
  }

  async speak() {
    const text = this.root.querySelector("#tts-text").value.trim();
    if (!text) {
      this.ttsStatus.textContent = "Type something to speak first.";
      return;
    }
    this.stopSpeaking();
    this.root.dataset.ttsMs = "0";
    this.ttsStatus.textContent = "Connecting…";
    let ws;
    try {
      ws = await connect(`/v1/tts/${encodeURIComponent(this.ttsEngine.value)}`);
    } catch (err) {
      this.ttsStatus.textContent = err.message;
      return;
    }
    this.ttsSocket = ws;
    this.ctx = this.ctx || new AudioContext();
    await this.ctx.resume();
    const player = new Player(this.ctx);
    this.player = player;
    this.root.querySelector("#tts-stop").disabled = false;
    let received = 0;
    let lastError = "";
    ws.onmessage = (e) => {
      if (typeof e.data !== "string") {
        player.play(e.data, TTS_RATE);
        received += (e.data.byteLength / 2 / TTS_RATE) * 1000;
        this.root.dataset.ttsMs = String(Math.round(received));
        this.ttsStatus.textContent = `Speaking… ${(received / 1000).toFixed(1)} s of audio received`;
        return;
      }
      const msg = JSON.parse(e.data);
      if (msg.type === "ready") {
        this.ttsStatus.textContent = `Synthesizing with ${this.ttsEngine.value}, voice ${msg.voice_id}…`;
      } else if (msg.type === "audio_end") {
        this.ttsStatus.textContent = `Done: ${(msg.total_duration_ms / 1000).toFixed(1)} s of audio.`;
        ws.close(1000);
      } else if (msg.type === "error") {
        lastError = `The engine could not speak this: ${msg.message}`;
      }
    };
    ws.onclose = (e) => {
      this.root.querySelector("#tts-stop").disabled = true;
      const why = ended(e, lastError);
      if (why) this.ttsStatus.textContent = why;
    };
    const init = { type: "init", sample_rate: TTS_RATE, encoding: "pcm16", binary: true };
    if (this.ttsVoice.value) init.voice_id = this.ttsVoice.value;
    ws.send(JSON.stringify(init));
    ws.send(JSON.stringify({ type: "input_text", text }));
    ws.send(JSON.stringify({ type: "flush" }));
  }

  stopSpeaking() {
    if (this.player) this.player.interrupt();
    if (this.ttsSocket && this.ttsSocket.readyState === WebSocket.OPEN) {
      this.ttsSocket.send(JSON.stringify({ type: "stop" }));
      this.ttsSocket.close(1000);
    }
    this.root.querySelector("#tts-stop").disabled = true;
  }

  /** Decode the file in the browser, resample to 16 kHz mono PCM16, stream it. */
  async transcribe(file) {
    this.sttResult.textContent = "";
    if (file.size > MAX_FILE_BYTES) {
      this.sttStatus.textContent = `That file is ${(file.size / 1048576).toFixed(0)} MB; the limit here is 50 MB.`;
      return;
    }
    this.sttStatus.textContent = `Reading ${file.name}…`;
    let pcm;
    try {
      pcm = await toPcm16(await file.arrayBuffer());
    } catch {
      this.sttStatus.textContent = `${file.name} is not audio this browser can decode. Try a WAV, MP3, OGG or FLAC file.`;
      return;
    }
    let ws;
    try {
      ws = await connect(`/v1/stt/${encodeURIComponent(this.root.querySelector("#stt-engine").value)}`);
    } catch (err) {
      this.sttStatus.textContent = err.message;
      return;
    }
    const finals = [];
    let lastError = "";
    let done = false;
    ws.onmessage = (e) => {
      const msg = JSON.parse(e.data);
      if (msg.type === "transcript") {
        if (msg.is_final) finals.push(msg.text);
        this.sttResult.textContent = [...finals, msg.is_final ? "" : msg.text].join(" ").trim();
      } else if (msg.type === "final_transcript") {
        // the answer to finalize holds every final since the start (or last finalize)
        this.sttResult.textContent = msg.text || finals.join(" ").trim() || "(no speech recognised)";
        this.sttStatus.textContent = `Done: ${msg.audio_duration_seconds.toFixed(1)} s of audio.`;
        done = true;
        ws.close(1000);
      } else if (msg.type === "error") {
        lastError = `The engine could not transcribe this: ${msg.message}`;
      }
    };
    ws.onclose = (e) => {
      const why = ended(e, lastError);
      if (why || !done) this.sttStatus.textContent = why || "The server closed the connection before the transcript was done.";
    };
    ws.send(JSON.stringify({ type: "start", sample_rate: STT_RATE, encoding: "pcm16", interim_results: true }));
    const step = (STT_RATE * STT_CHUNK_MS) / 1000;
    for (let i = 0; i < pcm.length; i += step) ws.send(pcm.subarray(i, i + step));
    ws.send(JSON.stringify({ type: "finalize" }));
    this.sttStatus.textContent = `Transcribing ${(pcm.length / STT_RATE).toFixed(1)} s of audio…`;
  }
}

/** Any audio file the browser decodes → 16 kHz mono PCM16. */
async function toPcm16(data) {
  const decoder = new OfflineAudioContext(1, 1, STT_RATE);
  const decoded = await decoder.decodeAudioData(data);
  const frames = Math.ceil(decoded.duration * STT_RATE);
  const offline = new OfflineAudioContext(1, frames, STT_RATE);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const rendered = (await offline.startRendering()).getChannelData(0);
  const pcm = new Int16Array(rendered.length);
  for (let i = 0; i < rendered.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(rendered[i] * 32767)));
  return pcm;
}
