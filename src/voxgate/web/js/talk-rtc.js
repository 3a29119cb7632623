// Talk through WebRTC and the media server: a session, the microphone pushed as a local
// track, a voice agent that listens to it (POST /agents/new), and the agent's track
// pulled back into the same PeerConnection. The transcript comes from the agent's event
// stream (GET /agents/{id}/events, Server-Sent Events with Realtime event shapes).
// The media API is the SFU's (spec/sfu.md), used as any application would.
// PeerTalk is what this mode shares with the OpenAI WebRTC mode (talk-openai-rtc.js):
// the PeerConnection, the agent's voice played, meters, the latency clock, the events.

import { ApiError, goneMessage, request, serverAlive } from "./api.js";
import { TurnClock, VOICE_LEVEL, streamMeter } from "./audio.js";

const GATHER_TIMEOUT_MS = 3000;

/** Resolves when the PeerConnection has its ICE candidates in its local description
 * (the media server takes no trickled candidates). */
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

/** One PeerConnection: the microphone goes up, the agent's voice comes down and plays in
 * #rtc-audio; meters and the turn clock read the audio itself. A subclass connects it
 * (`start`: `openPeer(ctx)`, its signalling, then `connected(mic)`) and says in `leave`
 * how to tell the server that the person left. */
export class PeerTalk {
  /** `ui`: as for WebSocketTalk. */
  constructor(ui) {
    this.ui = ui;
    this.stopped = false;
    this.clock = new TurnClock();
    this.answering = null; // item id of the answer being spoken
    this.waitingLatency = null;
    this.playedMs = 0;
  }

  /** The PeerConnection, its remote audio played as soon as it comes. */
  openPeer(ctx) {
    this.ctx = ctx;
    const pc = new RTCPeerConnection();
    this.pc = pc;
    delete document.getElementById("view-talk").dataset.rtc;
    pc.onconnectionstatechange = () => this.onConnectionState();
    pc.oniceconnectionstatechange = () => this.noteState();
    pc.ontrack = (e) => this.onTrack(e.streams[0] || new MediaStream([e.track]));
    return pc;
  }

  /** The microphone is on its way: the meters and the latency clock start. */
  connected(mic) {
    this.micMeter = streamMeter(this.ctx, mic);
    this.meter = setInterval(() => this.tick(), 50);
  }

  onTrack(stream) {
    const audio = document.getElementById("rtc-audio");
    audio.srcObject = stream; // Chromium sends a remote stream to Web Audio only while an element plays it
    audio.play().catch(() => {});
    this.agentMeter = streamMeter(this.ctx, stream);
  }

  onEvent(event) {
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        this.clock.started();
        this.answering = null;
        break;
      case "input_audio_buffer.speech_stopped":
        this.clock.stopped();
        break;
      case "response.output_audio_transcript.delta":
        this.answering = event.item_id;
        if (this.waitingLatency !== null) {
          this.ui.latency(event.item_id, this.waitingLatency);
          this.waitingLatency = null;
        }
        break;
      case "error":
        this.ui.warn(`The agent reported a problem: ${(event.error && event.error.message) || "unknown error"}`);
        break;
      default:
        break;
    }
    this.ui.event(event);
  }

  /** Every 50 ms: meters, the latency clock, and how much answer audio was heard. */
  tick() {
    const now = performance.now();
    const mic = this.micMeter.level();
    this.clock.mic(mic, now);
    this.ui.mic(mic);
    if (!this.agentMeter) return;
    const agent = this.agentMeter.level();
    this.ui.agent(agent);
    if (agent >= VOICE_LEVEL) {
      this.playedMs += 50;
      this.ui.played(this.playedMs);
      const ms = this.clock.answer(now);
      if (ms !== null) {
        if (this.answering) this.ui.latency(this.answering, ms);
        else this.waitingLatency = ms;
      }
    }
  }

  /** Each state the connection goes through (the latest 16), as "connection/ICE" in the
   * talk view's data-rtc, for whoever debugs a call that never connected. */
  noteState() {
    const view = document.getElementById("view-talk");
    const states = view.dataset.rtc ? view.dataset.rtc.split(" ") : [];
    states.push(`${this.pc.connectionState}/${this.pc.iceConnectionState}`);
    view.dataset.rtc = states.slice(-16).join(" ");
  }

  onConnectionState() {
    const state = this.pc.connectionState;
    this.noteState();
    if (this.stopped) return;
    if (state === "failed") {
      this.ui.fail(
        "The WebRTC connection could not be set up or was lost. Networks that block UDP need a TURN server; the WebSocket mode works without one."
      );
      this.stop(false);
    } else if (state === "disconnected") {
      serverAlive().then((alive) => {
        if (!alive && !this.stopped) this.lost();
      });
    }
  }

  lost() {
    this.ui.fail(goneMessage("press Start"));
    this.stop(false);
  }

  /** Tell the server the person left (a subclass's part of `stop`); the PeerConnection
   * closes once the promise it may return settles. */
  leave() {}

  /** Leave the call; `tellServer` false when the server is gone anyway. */
  stop(tellServer = true) {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.meter);
    const pc = this.pc;
    Promise.resolve(this.leave(tellServer)).finally(() => pc && pc.close());
    const audio = document.getElementById("rtc-audio");
    audio.srcObject = null;
    this.ui.ended();
  }
}

export class WebRtcTalk extends PeerTalk {
  async start(ctx, mic, { model, voice, app }) {
    if (!app) {
      throw new Error(
        "The WebRTC mode needs a media app without a secret (the built-in app “default” of a server on 127.0.0.1). Use the WebSocket mode here."
      );
    }
    const base = `/v1/apps/${encodeURIComponent(app)}`;
    this.base = base;
    this.ui.status("Opening a media-server session…");
    const { sessionId } = await this.call("POST", `${base}/sessions/new`);
    this.sessionId = sessionId;

    const pc = this.openPeer(ctx);
    const transceiver = pc.addTransceiver(mic.getAudioTracks()[0], { direction: "sendonly" });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const pushed = await this.call("POST", `${base}/sessions/${sessionId}/tracks/new`, {
      sessionDescription: { type: "offer", sdp: pc.localDescription.sdp },
      tracks: [{ location: "local", mid: transceiver.mid, trackName: "mic" }],
    });
    this.checkTracks(pushed);
    await pc.setRemoteDescription(pushed.sessionDescription);

    this.ui.status("Starting the voice agent…");
    const session = {};
    if (model) session.model = model;
    if (voice) session.audio = { output: { voice } };
    const agent = await this.call("POST", `${base}/agents/new`, {
      listen: [{ sessionId, trackName: "mic" }],
      session,
    });
    this.agent = agent;
    this.ui.session(agent.agentId);
    this.watch(`${base}/agents/${agent.agentId}/events`);

    const pulled = await this.call("POST", `${base}/sessions/${sessionId}/tracks/new`, {
      tracks: [{ location: "remote", sessionId: agent.sessionId, trackName: agent.trackName }],
    });
    this.checkTracks(pulled);
    await pc.setRemoteDescription(pulled.sessionDescription);
    await pc.setLocalDescription(await pc.createAnswer());
    await this.call("PUT", `${base}/sessions/${sessionId}/renegotiate`, {
      sessionDescription: { type: "answer", sdp: pc.localDescription.sdp },
    });

    this.connected(mic);
    this.ui.status("Connected through the media server. Ask something.");
  }

  async call(method, path, body) {
    try {
      return await request(method, path, { body });
    } catch (err) {
      if (err instanceof ApiError) throw new Error(`The media server refused a request (${err.code}): ${err.message}`);
      throw err;
    }
  }

  checkTracks(answer) {
    const failed = (answer.tracks || []).find((t) => t.errorCode);
    if (failed) throw new Error(`The media server refused the track “${failed.trackName}”: ${failed.errorDescription}`);
  }

  watch(url) {
    const source = new EventSource(url);
    this.events = source;
    source.onmessage = (e) => this.onEvent(JSON.parse(e.data));
    source.addEventListener("close", () => {
      source.close();
      if (!this.stopped) this.ui.fail("The voice agent left the call. Press Start to begin again.");
    });
    source.onerror = async () => {
      if (this.stopped || source.readyState !== EventSource.CLOSED) return;
      if (!(await serverAlive())) this.lost();
    };
  }

  leave(tellServer) {
    if (this.events) this.events.close();
    if (tellServer && this.agent) {
      request("POST", `${this.base}/agents/${this.agent.agentId}/close`).catch(() => {});
    }
  }
}
