// REST calls (docs/api.md). URLs are relative to the page, so a path prefix keeps working.

import * as auth from "./auth.js";

export class AuthError extends Error {
  constructor() {
    super("unauthorized");
    this.name = "AuthError";
  }
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message || `HTTP ${status}`);
    this.name = "HttpError";
    this.status = status;
  }
}

async function getJson(path, { signal } = {}) {
  const resp = await fetch(new URL(path, document.baseURI), {
    headers: { Accept: "application/json", ...auth.headers() },
    cache: "no-store",
    signal,
  });
  if (resp.status === 401) throw new AuthError();
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (!resp.ok) throw new HttpError(resp.status, body && body.error);
  return body;
}

/** Does the backend want a token? (`GET /api/auth`, answered without one.) */
export async function authRequired() {
  const body = await getJson("api/auth");
  return Boolean(body && body.required);
}

/** A cheap authenticated request: resolves true when the current token is accepted. */
export async function tokenAccepted() {
  try {
    await getJson("api/alerts");
    return true;
  } catch (err) {
    if (err instanceof AuthError) return false;
    throw err;
  }
}

/** `GET /api/alerts`: {firing, pending, recent}. */
export function alerts() {
  return getJson("api/alerts");
}

/** History of one device: `GET /api/devices/<id>?start&end&keys&points`. */
export function deviceHistory(id, { start, end, keys, points = 500, signal }) {
  const q = new URLSearchParams({
    start: start.toFixed(3),
    end: end.toFixed(3),
    points: String(points),
  });
  if (keys && keys.length) q.set("keys", keys.join(","));
  return getJson(`api/devices/${encodeURIComponent(id)}?${q}`, { signal });
}

/** The WebSocket URL for the current page, carrying the token as `?token=` when set. */
export function wsUrl() {
  const url = new URL("ws", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const t = auth.current();
  if (t) url.searchParams.set("token", t);
  return url.href;
}
