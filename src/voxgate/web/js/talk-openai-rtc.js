// Talk as OpenAI's own browser code does, in the WebRTC form of the Realtime API: a
// client secret minted by POST /v1/realtime/client_secrets; one PeerConnection with the
// microphone's track and a data channel "oai-events" that the page creates; the SDP
// offer POSTed to /v1/realtime/calls with `Authorization: Bearer ek_…`; the answer set as
// the remote description. The agent's voice is the remote track, and every Realtime
// server event but the audio deltas comes on the data channel. Barge-in happens on the
// server: it cuts the audio (output_audio_buffer.cleared) and truncates the answer to
// what was played (conversation.item.truncated). Stop closes the PeerConnection and hangs
// up the call (POST {Location}/hangup).

import { ApiError, clientSecret, exchange, whyFailed } from "./api.js";
import { PeerTalk } from "./talk-rtc.js";

const SECRET_SECONDS = 60;

export class OpenAiRtcTalk extends PeerTalk {
  async start(ctx, mic, { model, voice }) {
    const session = { type: "realtime" };
    if (model) session.model = model;
    if (voice) session.audio = { output: { voice } };
    this.ui.status("Getting a short-lived client secret…");
    const secret = await clientSecret(session, SECRET_SECONDS);
    this.secret = secret.value;
    if (this.stopped) return;

    const pc = this.openPeer(ctx);
    pc.addTrack(mic.getAudioTracks()[0]);
    const channel = pc.createDataChannel("oai-events");
    channel.onmessage = (e) => this.onEvent(JSON.parse(e.data));
    channel.onclose = () => this.onChannelClose();
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    this.ui.status("Calling…");
    let answer;
    try {
      answer = await exchange("POST", "/v1/realtime/calls", {
        body: offer.sdp,
        type: "application/sdp",
        token: this.secret,
      });
    } catch (err) {
      if (err instanceof ApiError) throw new Error(`The server refused the call (${err.status}): ${err.message}`);
      throw err;
    }
    this.location = answer.headers.get("Location");
    if (this.stopped) {
      await this.leave(true); // stopped while the call was being set up
      pc.close();
      return;
    }
    await pc.setRemoteDescription({ type: "answer", sdp: answer.text });
    this.connected(mic);
  }

  onEvent(event) {
    switch (event.type) {
      case "session.created":
        this.ui.session(event.session && event.session.id);
        break;
      case "conversation.item.truncated":
        // the server cut the answer (barge-in): what was heard of it
        this.ui.interrupted(event.item_id, event.audio_end_ms);
        break;
      case "error":
        this.lastError = (event.error && event.error.message) || null;
        break;
      default:
        break;
    }
    super.onEvent(event);
  }

  /** The server closed the data channel: the call is over (hung up, a limit, gone). */
  async onChannelClose() {
    if (this.stopped) return;
    const detail = this.lastError ? ` (${this.lastError})` : "";
    const message = await whyFailed(`The server ended the call${detail}. Press Start to begin a new one.`, "press Start");
    if (!this.stopped) this.ui.fail(message);
  }

  /** Hang up before the PeerConnection closes, so the server hears it from us first. */
  leave(tellServer) {
    if (!tellServer || !this.location) return null;
    return exchange("POST", `${this.location}/hangup`, { token: this.secret }).catch(() => {});
  }
}
