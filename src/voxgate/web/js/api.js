// HTTP and WebSocket helpers shared by the views. Errors come out as two classes, so a
// view can say in words what went wrong: the server could not be reached at all, or it
// answered with an error of its own.

/** The server did not answer (stopped, restarted, network gone). */
export class ServerUnreachable extends Error {
  constructor() {
    super(goneMessage("retry"));
    this.name = "ServerUnreachable";
  }
}

/** The server answered with an error status; `code` and `message` are its own words. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** JSON request to this server. Gateway errors are {error: {code, message}}, media-server
 * errors {errorCode, errorDescription}; both become an ApiError. */
export async function request(method, path, { body, token } = {}) {
  const json = body === undefined ? {} : { body: JSON.stringify(body), type: "application/json" };
  const { text } = await exchange(method, path, { ...json, token });
  return parseJson(text);
}

/** A request whose body and answer are not JSON (an SDP offer and its answer): `body`
 * goes as it is with Content-Type `type`. Returns {text, headers}; errors as request's. */
export async function exchange(method, path, { body, type, token } = {}) {
  const headers = {};
  if (type) headers["Content-Type"] = type;
  if (token) headers.Authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch {
    throw new ServerUnreachable();
  }
  const text = await res.text();
  if (!res.ok) {
    const data = parseJson(text);
    const err = (data && data.error) || {};
    const code = err.code || (data && data.errorCode) || "http_error";
    const message = err.message || (data && data.errorDescription) || res.statusText || `HTTP ${res.status}`;
    throw new ApiError(res.status, code, message);
  }
  return { text, headers: res.headers };
}

function parseJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

/** A client secret (`ek_…`) for `session` that lasts `seconds`, minted by
 * POST /v1/realtime/client_secrets, so the page never holds a long-lived token. Its
 * refusals come out in words for the person. */
export async function clientSecret(session, seconds) {
  try {
    return await request("POST", "/v1/realtime/client_secrets", {
      body: { expires_after: { anchor: "created_at", seconds }, session },
    });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      throw new Error(
        "This server requires a gateway token to mint client secrets, and a page must not hold one. Have your application's backend mint the secret, or run voxgate without tokens for this demo."
      );
    }
    if (err instanceof ApiError) throw new Error(`The server did not accept the session settings: ${err.message}`);
    throw err;
  }
}

/** Said whenever the server does not answer; `next` is what to do once it runs again. */
export function goneMessage(next) {
  return `The voxgate server cannot be reached. Is it still running? Start it again (make run), then ${next}.`;
}

/** Words for a connection that failed: `ifAlive` while the server still answers its
 * health check (it refused or dropped us), else that it is gone. */
export async function whyFailed(ifAlive, next) {
  return (await serverAlive()) ? ifAlive : goneMessage(next);
}

/** True when the server answers its health check. */
export async function serverAlive() {
  try {
    const res = await fetch("/healthz", { cache: "no-store" });
    return res.ok;
  } catch {
    return false;
  }
}

/** ws:// or wss:// address of a path on this server. */
export function wsUrl(path) {
  const url = new URL(path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** Words for a WebSocket close code from the gateway (see the README's close codes). */
export function closeReason(code) {
  switch (code) {
    case 4000: return "The server did not accept the credentials (a client secret lasts one minute).";
    case 4001: return "Too many messages: the server's rate limit was reached.";
    case 4002: return "A message was larger than the server allows.";
    case 4003: return "The session reached the server's time limit for one session.";
    case 4008: return "The session ended after a long silence.";
    case 1011: return "The server hit an internal error and ended the session.";
    case 1013: return "The server is busy; try again in a moment.";
    default: return "";
  }
}
