// The Gateway view: live sessions, recent usage records and the configuration, read from
// the server's own APIs (/v1/{account}/{gateway}/sessions, /logs, /config) and refreshed
// every two seconds while the view is shown.

import { ApiError, ServerUnreachable, request } from "./api.js";

const REFRESH_MS = 2000;
/** The configuration changes rarely (engines load on first use): read it less often. */
const CONFIG_REFRESH_MS = 10_000;

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}

function fillRows(table, rows, columns, empty) {
  const body = table.tBodies[0];
  if (rows.length === 0) {
    const td = cell(empty);
    td.colSpan = columns;
    td.className = "empty";
    const tr = document.createElement("tr");
    tr.append(td);
    body.replaceChildren(tr);
    return;
  }
  body.replaceChildren(
    ...rows.map(({ id, values }) => {
      const tr = document.createElement("tr");
      tr.dataset.session = id;
      tr.append(...values.map(cell));
      return tr;
    })
  );
}

export class GatewayView {
  constructor(root, serverGone) {
    this.root = root;
    this.serverGone = serverGone;
    this.token = "";
    this.timer = null;
    this.shown = false;
    this.configAt = 0;
    this.path = "/v1/local/default";
    this.errorBox = root.querySelector("#gw-error");
    root.querySelector("#gw-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.token = root.querySelector("#gw-token").value.trim();
      this.configAt = 0;
      this.refresh();
    });
    document.addEventListener("visibilitychange", () => this.schedule());
  }

  setGateway(gw) {
    this.path = `/v1/${encodeURIComponent(gw.account)}/${encodeURIComponent(gw.name)}`;
  }

  visible(shown) {
    this.shown = shown;
    if (shown) this.refresh();
    else clearTimeout(this.timer);
  }

  schedule() {
    clearTimeout(this.timer);
    if (this.shown && !document.hidden) this.timer = setTimeout(() => this.refresh(), REFRESH_MS);
  }

  get(path) {
    return request("GET", this.path + path, { token: this.token });
  }

  /** The configuration; null when it cannot be read (the reason is shown). */
  async loadConfig() {
    try {
      const config = await this.get("/config");
      this.showConfig(config);
      return config;
    } catch (err) {
      this.problem(err);
      if (err instanceof ServerUnreachable) throw err;
      return null;
    }
  }

  async refresh() {
    clearTimeout(this.timer);
    try {
      const configDue = Date.now() - this.configAt >= CONFIG_REFRESH_MS;
      const [live, logs, config] = await Promise.all([
        this.get("/sessions"),
        this.get("/logs?limit=20"),
        configDue ? this.get("/config") : null,
      ]);
      this.showLive(live);
      this.showUsage(logs.records);
      if (config) this.showConfig(config);
      this.errorBox.hidden = true;
      this.serverGone(false);
      this.root.querySelector("#gw-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      this.problem(err);
    }
    this.schedule();
  }

  problem(err) {
    if (err instanceof ServerUnreachable) {
      this.serverGone(true, () => this.refresh());
      this.root.querySelector("#gw-updated").textContent = "Server unreachable; retrying every two seconds.";
      return;
    }
    let text = err.message;
    if (err instanceof ApiError && err.status === 401) {
      text = "This gateway requires a token to show its sessions and usage. Enter one above (it stays in this tab only).";
    }
    this.errorBox.querySelector(".error-text").textContent = text;
    this.errorBox.hidden = false;
  }

  showLive(live) {
    this.root.querySelector("#live-count").textContent = String(live.count);
    const m = live.media;
    this.root.querySelector("#media-summary").textContent =
      `Media server: ${m.sessions} WebRTC session${m.sessions === 1 ? "" : "s"}, ${m.adapters} adapter${m.adapters === 1 ? "" : "s"}, ${m.agents} agent${m.agents === 1 ? "" : "s"} in calls.`;
    fillRows(
      this.root.querySelector("#live"),
      live.sessions.map((s) => ({
        id: s.id,
        values: [
          s.id,
          s.kind,
          s.model ? `${s.provider} / ${s.model}` : s.provider,
          seconds(s.duration_seconds),
          bytes(s.client_bytes),
          bytes(s.upstream_bytes),
          s.audio_seconds ? seconds(s.audio_seconds) : "—",
        ],
      })),
      7,
      "No live sessions. Talk to the agent, or connect a client, and they appear here."
    );
  }

  showUsage(records) {
    fillRows(
      this.root.querySelector("#usage"),
      records.map((r) => ({
        id: r.session_id,
        values: [
          new Date(r.started_at * 1000).toLocaleTimeString(),
          r.session_id,
          r.kind,
          r.model ? `${r.provider} / ${r.model}` : r.provider,
          seconds(r.duration_seconds),
          bytes(r.client_bytes),
          bytes(r.upstream_bytes),
          r.error ? `${r.client_close_code ?? "—"} (${r.error})` : String(r.client_close_code ?? "—"),
        ],
      })),
      8,
      "No usage recorded yet."
    );
  }

  showConfig(config) {
    this.configAt = Date.now();
    const providers = this.root.querySelector("#cfg-providers");
    providers.replaceChildren(
      ...config.providers.map((p) => {
        const li = document.createElement("li");
        li.textContent = `${p.name}: ${p.url}${p.key ? " (key stored)" : ""}`;
        return li;
      })
    );
    const e = config.engines;
    const loaded = new Set([...e.loaded.tts, ...e.loaded.stt]);
    const engines = this.root.querySelector("#cfg-engines");
    const item = (kind, x, isDefault) => {
      const li = document.createElement("li");
      const notes = [x.local === false ? "cloud" : "local"];
      if (isDefault) notes.push("default");
      if (loaded.has(x.name)) notes.push("loaded");
      if (x.available === false) notes.push(`unavailable: ${x.reason}`);
      li.textContent = `${kind} ${x.name} (${x.type}) — ${notes.join(", ")}`;
      return li;
    };
    engines.replaceChildren(
      ...e.tts.map((x) => item("TTS", x, x.name === e.default_tts)),
      ...e.stt.map((x) => item("STT", x, x.name === e.default_stt)),
      ...config.llm.map((l) => {
        const li = document.createElement("li");
        li.textContent = `LLM ${l.name}: ${l.url}`;
        return li;
      })
    );
    const limits = this.root.querySelector("#cfg-limits");
    const rows = Object.entries(config.gateway.limits).map(([k, v]) => {
      const dt = document.createElement("dt");
      dt.textContent = k.replaceAll("_", " ");
      const dd = document.createElement("dd");
      dd.textContent = String(v);
      return [dt, dd];
    });
    const gw = config.gateway;
    const tokens = document.createElement("dt");
    tokens.textContent = "tokens";
    const tokensValue = document.createElement("dd");
    tokensValue.textContent = gw.tokens.length ? gw.tokens.join(", ") : "none (open gateway)";
    limits.replaceChildren(tokens, tokensValue, ...rows.flat());
  }
}
