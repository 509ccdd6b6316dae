// Alert history panel (issue 18): who did what and when — transitions, notifications, acks,
// snoozes, silences — from `GET /api/alerts/history?device=&rule=&limit=`. Loaded when the
// panel is opened and on "Refresh"; text only (textContent), never HTML from the server.

import * as auth from "./auth.js";
import { isoTime, localTime } from "./format.js";

const LIMIT = 100;

export async function fetchHistory({ device = "", rule = "", limit = LIMIT } = {}) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (device) query.set("device", device);
  if (rule) query.set("rule", rule);
  const resp = await fetch(new URL(`api/alerts/history?${query}`, document.baseURI), {
    headers: { Accept: "application/json", ...auth.headers() },
    cache: "no-store",
  });
  const body = await resp.json().catch(() => null);
  if (!resp.ok) throw new Error((body && body.error) || `HTTP ${resp.status}`);
  return body.entries || [];
}

export function historyItem(entry) {
  const li = document.createElement("li");
  li.className = `history-item history-${entry.kind}`;
  li.dataset.kind = entry.kind;
  const when = document.createElement("time");
  when.dateTime = isoTime(entry.at);
  when.textContent = localTime(entry.at);
  const what = document.createElement("span");
  what.className = "history-what";
  what.textContent = `${entry.kind} ${entry.rule} on ${entry.device}`;
  const who = document.createElement("span");
  who.className = "history-who";
  who.dataset.testid = "history-who";
  who.textContent = entry.who;
  li.append(when, " ", what, " · ", who);
  if (entry.detail) li.title = entry.detail;
  return li;
}

export class HistoryPanel {
  constructor(root) {
    this.root = root;
    this.list = root.querySelector("[data-testid=history-list]");
    this.device = root.querySelector("[data-testid=history-device]");
    this.message = root.querySelector("[data-testid=history-message]");
    root.addEventListener("toggle", () => root.open && this.load());
    root.querySelector("form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.load();
    });
  }

  async load() {
    this.message.textContent = "Loading…";
    try {
      const entries = await fetchHistory({ device: this.device.value.trim() });
      this.list.replaceChildren(...entries.map(historyItem));
      this.message.textContent = entries.length ? "" : "No history yet.";
    } catch (err) {
      this.message.textContent = `History unavailable: ${err.message}`;
    }
  }
}

const panel = document.querySelector("[data-testid=alert-history]");
if (panel) new HistoryPanel(panel);
