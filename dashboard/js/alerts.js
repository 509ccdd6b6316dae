// The alert feed: what is firing now, and recent firing/resolved events, newest first.

import { ago, isoTime, localTime, now } from "./format.js";

const MAX_RECENT = 200;
const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 };

export function alertItem(alert, timeField) {
  const li = document.createElement("li");
  li.dataset.testid = "alert-item";
  li.dataset.kind = alert.kind;
  li.dataset.severity = alert.severity || "";
  li.dataset.rule = alert.rule || "";
  li.dataset.device = alert.device || "";
  li.className = `alert kind-${alert.kind}`;
  const sev = document.createElement("span");
  sev.className = `sev sev-${alert.severity}`;
  sev.textContent = alert.kind === "resolved" ? "resolved" : alert.severity;
  const link = document.createElement("a");
  link.href = `#/device/${encodeURIComponent(alert.device)}`;
  link.className = "summary";
  link.textContent = alert.summary || `${alert.rule} on ${alert.device}`;
  const time = document.createElement("time");
  const ts = alert[timeField];
  time.dateTime = isoTime(ts);
  time.title = localTime(ts);
  time.dataset.ts = String(ts);
  time.textContent = ago(ts);
  li.append(sev, link, time);
  return li;
}

/** Refresh the relative times of the alert items under `root`. */
export function tickTimes(root) {
  const t = now();
  for (const time of root.querySelectorAll("time[data-ts]")) {
    const text = ago(Number(time.dataset.ts), t);
    if (time.textContent !== text) time.textContent = text;
  }
}

export function byUrgency(a, b) {
  const s = (SEVERITY_ORDER[a.severity] ?? 3) - (SEVERITY_ORDER[b.severity] ?? 3);
  return s || b.started_at - a.started_at;
}

export class AlertFeed {
  constructor(root, { onChange }) {
    this.root = root;
    this.firingList = root.querySelector("[data-testid=alerts-firing]");
    this.recentList = root.querySelector("[data-testid=alerts-recent]");
    this.firingNone = root.querySelector("[data-testid=alerts-firing-none]");
    this.recentNone = root.querySelector("[data-testid=alerts-recent-none]");
    this.count = root.querySelector("[data-testid=alerts-firing-count]");
    this.onChange = onChange;
    this.firing = new Map(); // key -> alert
  }

  /** Firing alerts of one device, most urgent first. */
  firingFor(device) {
    return [...this.firing.values()].filter((a) => a.device === device).sort(byUrgency);
  }

  /** From a snapshot: replaces everything. */
  replace({ firing = [], recent = [] } = {}) {
    this.firing = new Map(firing.map((a) => [a.key, a]));
    const frag = document.createDocumentFragment();
    for (const ev of recent.slice(0, MAX_RECENT)) frag.append(alertItem(ev, "at"));
    this.recentList.replaceChildren(frag);
    this._renderFiring();
  }

  /** New events from an update frame, oldest first. */
  add(events) {
    if (!events || !events.length) return;
    for (const ev of events) {
      if (ev.kind === "firing") this.firing.set(ev.key, ev);
      else this.firing.delete(ev.key);
      this.recentList.prepend(alertItem(ev, "at"));
    }
    while (this.recentList.childElementCount > MAX_RECENT) this.recentList.lastElementChild.remove();
    this._renderFiring();
  }

  /** Once a second: relative times. */
  tick() {
    tickTimes(this.root);
  }

  _renderFiring() {
    const frag = document.createDocumentFragment();
    for (const a of [...this.firing.values()].sort(byUrgency)) frag.append(alertItem(a, "started_at"));
    this.firingList.replaceChildren(frag);
    this.count.textContent = String(this.firing.size);
    this.firingNone.hidden = this.firing.size > 0;
    this.recentNone.hidden = this.recentList.childElementCount > 0;
    this.onChange();
  }
}
