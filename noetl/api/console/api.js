// The REST API with the session's bearer token; the token never leaves sessionStorage.

const KEY = "noetl.token";

export class ApiError extends Error {
  constructor(status, message, problems) {
    super(message);
    this.status = status;
    this.problems = problems ?? [];
  }
}

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  if (value === null) sessionStorage.removeItem(KEY);
  else sessionStorage.setItem(KEY, value);
}

function headers(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra;
}

/** Called with no argument when the API answers 401: the app shows the login form. */
let onUnauthorized = () => {};
export function whenUnauthorized(callback) {
  onUnauthorized = callback;
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  if (resp.status === 204) return null;
  const data = await resp.json().catch(() => ({ error: `${resp.status} ${resp.statusText}` }));
  if (resp.status === 401) onUnauthorized();
  if (!resp.ok) throw new ApiError(resp.status, data.error ?? resp.statusText, data.problems);
  return data;
}

/**
 * Follow an execution's server-sent events with fetch (EventSource cannot send the token):
 * `onEvent(event)` for each announced event, `onEnd(document)` once at the `end` event.
 */
export async function follow(id, { onEvent, onEnd, signal }) {
  const resp = await fetch(`/api/executions/${id}/stream`, { headers: headers(), signal });
  if (!resp.ok) throw new ApiError(resp.status, `stream: ${resp.status}`);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const name = /^event: (.*)$/m.exec(block)?.[1] ?? "message";
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (!data) continue;
      if (name === "end") {
        onEnd(JSON.parse(data));
        return;
      }
      if (name === "message") onEvent(JSON.parse(data));
    }
  }
}
