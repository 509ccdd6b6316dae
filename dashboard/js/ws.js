// A WebSocket that reconnects by itself: exponential backoff with jitter, capped at 10 s.

export const BACKOFF = Object.freeze({ baseMs: 500, capMs: 10000 });
const AUTH_CLOSE_CODES = new Set([4401, 1008]);

/** Delay before attempt `n` (0-based): half fixed, half random ("equal jitter"). */
export function backoffMs(n, random = Math.random) {
  const ceiling = Math.min(BACKOFF.capMs, BACKOFF.baseMs * 2 ** n);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/**
 * States reported to `onState(state, detail)`:
 *  "connecting", "connected", "reconnecting" ({retryAt, attempt}), "disconnected" ({reason}).
 *
 * Options:
 *  url()            -> the URL to open (read at every attempt, so a new token is used)
 *  prepare()        -> async, run before every attempt (e.g. ask for a token); may throw
 *  onFrame(msg)     -> every parsed JSON frame
 *  onAuthFailure()  -> async, the server refused us; resolves when a new token is available
 *  probeAuth()      -> async, after a failed handshake: false when the token is refused
 */
export class ReconnectingSocket {
  constructor({ url, prepare, onFrame, onState, onAuthFailure, probeAuth }) {
    Object.assign(this, { url, prepare, onFrame, onState, onAuthFailure, probeAuth });
    this.ws = null;
    this.attempt = 0;
    this.timer = 0;
    this.busy = false; // between the start of an attempt and its socket existing
    this.stopped = true;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener("online", this._onOnline);
    this._connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener("online", this._onOnline);
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }

  /** Skip the wait and try now (button, browser back online, new token). */
  reconnectNow() {
    if (this.stopped) return;
    if (this.busy || (this.ws && this.ws.readyState <= WebSocket.OPEN)) return;
    clearTimeout(this.timer);
    this._connect();
  }

  /** The page's state went wrong: close and reconnect (as after any close) for a snapshot. */
  resync() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(4000, "resync");
  }

  _onOnline = () => this.reconnectNow();

  async _connect() {
    this.timer = 0;
    this.busy = true;
    this.onState("connecting", {});
    try {
      if (this.prepare) await this.prepare();
    } catch {
      this.busy = false;
      this._schedule();
      return;
    }
    this.busy = false;
    if (this.stopped) return;
    const ws = new WebSocket(this.url());
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.onState("connected", {});
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return; // not ours; ignore
      }
      if (msg.type === "snapshot") this.attempt = 0; // a healthy connection resets backoff
      this.onFrame(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.busy = true; // until the next attempt is scheduled or started
      if (!this.stopped) this._closed(ev.code, opened);
    };
  }

  async _closed(code, opened) {
    if (AUTH_CLOSE_CODES.has(code)) {
      await this._reauth();
      return;
    }
    if (!opened && this.probeAuth) {
      // A refused handshake looks like any network error (code 1006): ask the REST API.
      try {
        if (!(await this.probeAuth())) {
          await this._reauth();
          return;
        }
      } catch {
        // backend unreachable: plain reconnect
      }
    }
    this._schedule();
  }

  async _reauth() {
    this.onState("disconnected", { reason: "auth" });
    await this.onAuthFailure();
    this.attempt = 0;
    if (!this.stopped) this._connect();
  }

  _schedule() {
    this.busy = false;
    if (this.stopped) return;
    const delay = backoffMs(this.attempt);
    this.attempt += 1;
    const retryAt = Date.now() + delay;
    this.onState("reconnecting", { retryAt, attempt: this.attempt });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this._connect(), delay);
  }
}
