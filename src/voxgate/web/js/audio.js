// Audio in the browser: the microphone (AudioWorklet → PCM16), streamed playback of PCM16
// chunks, level meters, and the clock that measures each turn's latency.

/** Microphone problems, with what the person can do next. */
export class MicError extends Error {
  constructor(message) {
    super(message);
    this.name = "MicError";
  }
}

/** The microphone's stream. Raises MicError in words a person understands. */
export async function openMic() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new MicError(
      "This page cannot use a microphone here: browsers allow it only on https:// or http://127.0.0.1 / localhost addresses."
    );
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      throw new MicError(
        "Microphone access was denied. Allow the microphone for this site (the icon at the left of the address bar), then press Start again."
      );
    }
    if (name === "NotFoundError" || name === "OverconstrainedError") {
      throw new MicError("No microphone was found. Connect one, then press Start again.");
    }
    if (name === "NotReadableError") {
      throw new MicError("The microphone is in use by another program or could not be opened. Close that program, then press Start again.");
    }
    throw new MicError(`The microphone could not be opened (${name || err}).`);
  }
}

/** Root mean square of an analyser's current window (0..1). */
function levelOf(analyser, buffer) {
  analyser.getFloatTimeDomainData(buffer);
  let sum = 0;
  for (const v of buffer) sum += v * v;
  return Math.sqrt(sum / buffer.length);
}

/** An analyser to connect sources to: `level()` reads it whenever a reading is wanted. */
function meter(ctx) {
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  const buffer = new Float32Array(analyser.fftSize);
  return { analyser, level: () => levelOf(analyser, buffer) };
}

/** A meter on a live stream. */
export function streamMeter(ctx, stream) {
  const m = meter(ctx);
  ctx.createMediaStreamSource(stream).connect(m.analyser);
  return m;
}

/** Microphone → PCM16 chunks at `rate`, through an AudioWorklet.
 * `onChunk(pcm: ArrayBuffer, level: number)` is called every `chunkMs`. */
export async function startCapture(ctx, stream, rate, onChunk, chunkMs = 40) {
  await ctx.audioWorklet.addModule("/ui/js/capture-worklet.js");
  const node = new AudioWorkletNode(ctx, "pcm-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    processorOptions: { targetRate: rate, chunkMs },
  });
  node.port.onmessage = (e) => onChunk(e.data.pcm, e.data.level);
  const source = ctx.createMediaStreamSource(stream);
  const mute = ctx.createGain();
  mute.gain.value = 0; // keeps the worklet pulled without playing the microphone back
  source.connect(node).connect(mute).connect(ctx.destination);
  return () => {
    node.port.onmessage = null;
    source.disconnect();
    node.disconnect();
  };
}

/** Plays PCM16 mono chunks as they arrive, back to back, and can be cut off at once. */
export class Player {
  constructor(ctx) {
    this.ctx = ctx;
    this.meter = meter(ctx);
    this.analyser = this.meter.analyser;
    this.analyser.connect(ctx.destination);
    this.sources = new Set();
    this.next = 0;
    /** Milliseconds of audio played to the end (not cut off). */
    this.playedMs = 0;
  }

  /** Queue one chunk; returns when it will start, in `performance.now()` milliseconds. */
  play(pcm, rate) {
    const samples = new Int16Array(pcm);
    if (samples.length === 0) return null;
    const audio = this.ctx.createBuffer(1, samples.length, rate);
    const channel = audio.getChannelData(0);
    for (let i = 0; i < samples.length; i++) channel[i] = samples[i] / 32768;
    const source = this.ctx.createBufferSource();
    source.buffer = audio;
    source.connect(this.analyser);
    const startAt = Math.max(this.ctx.currentTime + 0.03, this.next);
    source.start(startAt);
    this.next = startAt + audio.duration;
    this.sources.add(source);
    source.onended = () => {
      if (this.sources.delete(source)) this.playedMs += audio.duration * 1000;
    };
    return performance.now() + (startAt - this.ctx.currentTime) * 1000;
  }

  /** Seconds of queued audio not yet played. */
  get pending() {
    return Math.max(0, this.next - this.ctx.currentTime);
  }

  /** Stop everything queued (barge-in, stop). */
  interrupt() {
    const stopping = [...this.sources];
    this.sources.clear();
    for (const s of stopping) s.stop();
    this.next = 0;
  }

  level() {
    return this.meter.level();
  }
}

/** Voice above this RMS counts as speech for the latency clock (about −40 dBFS). */
export const VOICE_LEVEL = 0.01;

/** Per turn: the time from the end of the person's speech to the first audio of the
 * answer they hear. The end of speech is the last moment the microphone was above
 * VOICE_LEVEL before the server said the turn ended; the first audio is when the first
 * answer samples play. */
export class TurnClock {
  constructor() {
    this.lastVoice = null;
    this.endOfSpeech = null;
  }

  mic(level, at = performance.now()) {
    if (level >= VOICE_LEVEL) this.lastVoice = at;
  }

  /** The server detected the end of the turn. */
  stopped() {
    this.endOfSpeech = this.lastVoice ?? performance.now();
  }

  /** The person started a new turn: an answer not yet heard is no longer measured. */
  started() {
    this.endOfSpeech = null;
  }

  /** Answer audio starts at `at`; returns the turn's latency in ms the first time. */
  answer(at) {
    if (this.endOfSpeech === null) return null;
    const ms = Math.max(0, at - this.endOfSpeech);
    this.endOfSpeech = null;
    return ms;
  }
}

export function bytesToBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}
