// Fleet figures and the connection indicator.

import { num } from "./format.js";

function setText(el, text) {
  if (el && el.textContent !== text) el.textContent = text;
}

/** Write the fleet summary (docs/api.md "Fleet summary") into the figures bar. */
export function renderSummary(root, s) {
  if (!s) return;
  const q = (id) => root.querySelector(`[data-testid=summary-${id}]`);
  setText(q("online"), `${num(s.online)} / ${num(s.devices)}`);
  setText(q("rate"), num(s.samples_per_s, 1));
  setText(q("lost"), num(s.lost_samples));
  setText(q("rejected"), num(s.rejected));
  setText(q("duplicates"), num(s.duplicates));
  setText(q("firing"), num(s.firing));
  q("online").classList.toggle("bad", s.offline > 0);
  q("lost").classList.toggle("bad", s.lost_samples > 0);
  q("firing").classList.toggle("bad", s.firing > 0);
  document.title = s.firing > 0 ? `(${s.firing}) edgefleet` : "edgefleet";
}

const STATE_TEXT = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting",
  disconnected: "Disconnected",
};

/** The connection indicator; `reconnecting` counts down to the next attempt. */
export class ConnState {
  constructor(root, { onRetry }) {
    this.root = root;
    this.text = root.querySelector(".conn-text");
    this.wait = root.querySelector(".conn-wait");
    this.retry = root.querySelector(".conn-retry");
    this.retry.addEventListener("click", onRetry);
    this.retryAt = 0;
  }

  set(state, detail = {}) {
    this.root.dataset.state = state;
    let text = STATE_TEXT[state] || state;
    if (state === "disconnected" && detail.reason === "auth") text = "Disconnected: access token needed";
    setText(this.text, text);
    this.retryAt = state === "reconnecting" ? detail.retryAt : 0;
    this.retry.hidden = state !== "reconnecting";
    this.tick();
  }

  /** Once a second (and on every change): "in N s". */
  tick() {
    const text = this.retryAt ? ` in ${Math.max(0, Math.ceil((this.retryAt - Date.now()) / 1000))} s` : "";
    setText(this.wait, text);
  }
}

/**
 * The backend health strip (`summary.backend`, docs/api.md): is the backend itself receiving
 * and keeping up? `uncommitted` is shown only when the backend reports it.
 */
export function renderHealth(root, b) {
  root.hidden = !b;
  if (!b) return;
  const q = (id) => root.querySelector(`[data-testid=health-${id}]`);
  const connected = Boolean(b.feed_connected);
  setText(q("feed"), connected ? "connected" : "disconnected");
  q("feed").classList.toggle("bad", !connected);
  const lag = typeof b.ingest_lag_s === "number" ? b.ingest_lag_s : null;
  setText(q("lag"), lag === null ? "–" : `${num(lag, 1)} s`);
  q("lag").classList.toggle("bad", lag !== null && lag > 30);
  setText(q("inbox"), num(b.inbox));
  setText(q("refusals"), num(b.rejected_per_s, 1));
  q("refusals").classList.toggle("bad", b.rejected_per_s > 0);
  setText(q("outbox"), num(b.outbox));
  const has = typeof b.uncommitted === "number";
  q("uncommitted").parentElement.hidden = !has;
  if (has) setText(q("uncommitted"), num(b.uncommitted));
}
