// AudioWorklet: microphone samples → PCM16 at the session's rate, in chunks.
// Runs on the audio thread. Each message to the page is {pcm: ArrayBuffer, level}, level
// being the chunk's RMS (0..1). Resampling is linear interpolation, which is enough for
// speech recognition; `sampleRate` is the AudioContext's rate (a global in this scope).

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.step = sampleRate / (opts.targetRate || 24000);
    this.chunk = new Int16Array(Math.round(((opts.targetRate || 24000) * (opts.chunkMs || 40)) / 1000));
    this.fill = 0;
    this.sumSquares = 0;
    this.t = 0; // position of the next output sample, in input samples from this block's start
    this.prev = 0; // the previous block's last sample (index -1)
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || input[0].length === 0) return true;
    const n = input[0].length;
    let x = input[0];
    if (input.length > 1) {
      x = new Float32Array(n);
      for (const channel of input) for (let i = 0; i < n; i++) x[i] += channel[i] / input.length;
    }
    let t = this.t;
    while (t <= n - 1) {
      const i = Math.floor(t);
      const a = i < 0 ? this.prev : x[i];
      const b = i + 1 < n ? x[i + 1] : a;
      const v = a + (b - a) * (t - i);
      this.sumSquares += v * v;
      this.chunk[this.fill++] = Math.max(-32768, Math.min(32767, Math.round(v * 32767)));
      if (this.fill === this.chunk.length) this.flush();
      t += this.step;
    }
    this.t = t - n;
    this.prev = x[n - 1];
    return true;
  }

  flush() {
    const pcm = this.chunk.slice().buffer;
    const level = Math.sqrt(this.sumSquares / this.chunk.length);
    this.port.postMessage({ pcm, level }, [pcm]);
    this.fill = 0;
    this.sumSquares = 0;
  }
}

registerProcessor("pcm-capture", PcmCapture);
