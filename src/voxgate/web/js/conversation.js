// The live transcript: OpenAI Realtime server events in, list items out. Both talk modes
// feed it the same events (the WebSocket mode from its socket, the WebRTC mode from the
// agent's event stream).

export class Conversation {
  constructor(list) {
    this.list = list;
    this.items = new Map(); // item_id → <li>
  }

  clear() {
    this.list.replaceChildren();
    this.items.clear();
  }

  note(text) {
    const li = document.createElement("li");
    li.className = "note";
    li.textContent = text;
    this.list.append(li);
    li.scrollIntoView({ block: "nearest" });
  }

  /** One Realtime server event. */
  handle(event) {
    switch (event.type) {
      case "input_audio_buffer.speech_started":
        this.line(event.item_id, "user", "You", "…");
        break;
      case "conversation.item.input_audio_transcription.completed": {
        const li = this.line(event.item_id, "user", "You", "");
        this.setText(li, event.transcript || "(nothing recognised)");
        break;
      }
      case "response.output_audio_transcript.delta": {
        const li = this.line(event.item_id, "assistant", "Agent", "");
        this.setText(li, this.textOf(li) + (event.delta || ""));
        break;
      }
      case "response.output_audio_transcript.done":
        if (event.transcript) this.setText(this.line(event.item_id, "assistant", "Agent", ""), event.transcript);
        break;
      case "conversation.item.truncated": {
        // the server cut its copy of the answer to what was heard
        const li = this.items.get(event.item_id);
        if (li) li.dataset.truncatedMs = String(event.audio_end_ms);
        break;
      }
      default:
        break;
    }
  }

  /** The measured latency of the turn answered by assistant item `id`. */
  latency(id, ms) {
    const li = this.line(id, "assistant", "Agent", "");
    if (!li.querySelector(".latency")) this.showLatency(li, ms);
  }

  /** The person spoke over this answer after hearing `heardMs` of it. */
  interrupted(id, heardMs) {
    const li = this.line(id, "assistant", "Agent", "");
    if (li.classList.contains("interrupted")) return;
    li.classList.add("interrupted");
    const span = document.createElement("span");
    span.className = "detail";
    span.textContent = `Interrupted after ${(heardMs / 1000).toFixed(1)} s`;
    li.append(span);
  }

  showLatency(li, ms) {
    const span = document.createElement("span");
    span.className = "latency";
    span.dataset.ms = String(Math.round(ms));
    span.textContent = `First audio ${Math.round(ms)} ms after you stopped speaking`;
    li.append(span);
  }

  line(id, role, who, text) {
    const key = id || `${role}-${this.list.children.length}`;
    let li = this.items.get(key);
    if (!li) {
      li = document.createElement("li");
      li.className = role;
      li.dataset.role = role;
      const label = document.createElement("span");
      label.className = "who";
      label.textContent = `${who}:`;
      const body = document.createElement("span");
      body.className = "text";
      body.textContent = text;
      li.append(label, body);
      this.list.append(li);
      this.items.set(key, li);
      li.scrollIntoView({ block: "nearest" });
    }
    return li;
  }

  textOf(li) {
    return li.querySelector(".text").textContent;
  }

  setText(li, text) {
    li.querySelector(".text").textContent = text;
  }
}
