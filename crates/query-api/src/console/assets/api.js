// The API as the console uses it: same-origin requests carrying the session cookie, every one
// with the CSRF header the server requires of cookie-authenticated writes.

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

// Reads (GET) the server could not answer for now (503: a dependency is down; 429: over the rate
// limit) are tried again after the Retry-After it names (at most 10 s), three times in all; a write
// is never repeated, since the server may have done it.
const READ_ATTEMPTS = 3;
const LONGEST_RETRY_MS = 10_000;

export async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { "X-OpsSentinal-CSRF": "1", Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  for (let attempt = 1; ; attempt++) {
    const response = await fetch(path, init);
    if (response.status === 204) return null;
    const json = await response.json().catch(() => null);
    if (response.ok) return json;
    const retried = method === "GET" && (response.status === 503 || response.status === 429) && attempt < READ_ATTEMPTS;
    if (!retried) throw new ApiError(response.status, json);
    const seconds = Number(response.headers.get("Retry-After"));
    const wait = Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, LONGEST_RETRY_MS) : 1000;
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

// Every change type the stream names its events by (DESIGN §9).
const CHANGE_TYPES = [
  "triggered", "alert_added", "acknowledged", "resolved", "snoozed", "reopened", "assigned", "urgency_changed",
  "priority_changed", "note_added", "reordered", "suppressed", "escalated",
];

// Follows the change stream (the session cookie authenticates it; the browser resumes with
// Last-Event-ID after a dropped connection). `onChange(change)` for each change, `onReset()` when
// the stream says to refetch. Returns a function that stops it.
export function follow(query, onChange, onReset) {
  const source = new EventSource(`/api/stream?${new URLSearchParams(query)}`);
  const handle = (event) => {
    try {
      onChange(JSON.parse(event.data));
    } catch (err) {
      console.warn("unreadable change", err);
    }
  };
  for (const type of CHANGE_TYPES) source.addEventListener(type, handle);
  source.addEventListener("reset", () => onReset());
  return () => source.close();
}
