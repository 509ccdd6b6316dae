// The alert feed: what is firing now, what is pending (condition met, waiting out its `for`
// window), and recent firing/resolved events, newest first.

import { ago, duration, isoTime, localTime, now } from "./format.js";

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
  if (alert.muted) { // firing, but sending nothing: silenced, in maintenance or inhibited
    li.dataset.muted = alert.muted.kind;
    const muted = document.createElement("span");
    muted.className = "muted-by";
    muted.dataset.testid = "alert-muted";
    muted.textContent = alert.muted.kind;
    muted.title = `${alert.muted.kind} by ${alert.muted.by}: nothing is sent`;
    li.append(muted);
  }
  return li;
}

/** "pending 40 s of 60 s": how far a pending alert is into its `for` window. */
export function pendingText(alert, at = now()) {
  const forS = typeof alert.for_s === "number" ? alert.for_s : null;
  const since = typeof alert.since === "number" ? alert.since : null;
  if (forS === null || since === null) return "pending";
  return `pending ${duration(Math.min(forS, Math.max(0, at - since)))} of ${duration(forS)}`;
}

/** One pending alert: its summary and how long it has been pending. */
export function pendingItem(alert) {
  const li = document.createElement("li");
  li.dataset.testid = "alert-item";
  li.dataset.kind = "pending";
  li.dataset.severity = alert.severity || "";
  li.dataset.rule = alert.rule || "";
  li.dataset.device = alert.device || "";
  li.className = "alert kind-pending";
  const sev = document.createElement("span");
  sev.className = `sev sev-${alert.severity}`;
  sev.textContent = "pending";
  const link = document.createElement("a");
  link.href = `#/device/${encodeURIComponent(alert.device)}`;
  link.className = "summary";
  link.textContent = alert.summary || `${alert.rule} on ${alert.device}`;
  const progress = document.createElement("span");
  progress.className = "progress";
  progress.dataset.testid = "pending-progress";
  progress.textContent = pendingText(alert);
  li.append(sev, link, progress);
  if (typeof alert.since === "number") li.dataset.since = String(alert.since);
  if (typeof alert.for_s === "number") li.dataset.forS = String(alert.for_s);
  return li;
}

/** Refresh the "pending N s of M s" texts under `root`. */
export function tickPending(root, at = now()) {
  for (const li of root.querySelectorAll("li.kind-pending")) {
    const el = li.querySelector(".progress");
    const { since, forS } = li.dataset;
    const text = pendingText({ since: since && Number(since), for_s: forS && Number(forS) }, at);
    if (el && el.textContent !== text) el.textContent = text;
  }
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
  const start = (x) => x.started_at ?? x.since ?? 0;
  return s || start(b) - start(a);
}

export class AlertFeed {
  constructor(root, { onChange, decorate = null }) {
    this.root = root;
    this.firingList = root.querySelector("[data-testid=alerts-firing]");
    this.recentList = root.querySelector("[data-testid=alerts-recent]");
    this.firingNone = root.querySelector("[data-testid=alerts-firing-none]");
    this.recentNone = root.querySelector("[data-testid=alerts-recent-none]");
    this.count = root.querySelector("[data-testid=alerts-firing-count]");
    this.pendingList = root.querySelector("[data-testid=alerts-pending]");
    this.pendingSection = root.querySelector("[data-testid=alerts-pending-section]");
    this.pendingCount = root.querySelector("[data-testid=alerts-pending-count]");
    this.onChange = onChange;
    this.decorate = decorate; // (li, alert) => void: adds buttons to a firing alert
    this.firing = new Map(); // key -> alert
    this.pending = new Map(); // key -> pending alert
  }

  /** Pending alerts of one device, most urgent first. */
  pendingFor(device) {
    return [...this.pending.values()].filter((a) => a.device === device).sort(byUrgency);
  }

  /** The full list of pending alerts (snapshot, or an update frame that carries one). */
  setPending(pending) {
    this.pending = new Map((Array.isArray(pending) ? pending : []).map((a) => [a.key, a]));
    this._renderPending();
    this.onChange();
  }

  /** Firing alerts of one device, most urgent first. */
  firingFor(device) {
    return [...this.firing.values()].filter((a) => a.device === device).sort(byUrgency);
  }

  /** From a snapshot: replaces everything. */
  replace({ firing = [], recent = [], pending = [] } = {}) {
    this.firing = new Map(firing.map((a) => [a.key, a]));
    this.pending = new Map((Array.isArray(pending) ? pending : []).map((a) => [a.key, a]));
    this._renderPending();
    const frag = document.createDocumentFragment();
    for (const ev of recent.slice(0, MAX_RECENT)) frag.append(alertItem(ev, "at"));
    this.recentList.replaceChildren(frag);
    this._renderFiring();
  }

  /** New events from an update frame, oldest first. */
  add(events) {
    if (!events || !events.length) return;
    let pendingChanged = false;
    for (const ev of events) {
      if (ev.kind === "pending") {
        this.pending.set(ev.key, ev); // should a backend send pending as events
        pendingChanged = true;
        continue;
      }
      if (ev.kind === "firing") this.firing.set(ev.key, ev);
      else this.firing.delete(ev.key);
      pendingChanged = this.pending.delete(ev.key) || pendingChanged; // it fired or cleared
      this.recentList.prepend(alertItem(ev, "at"));
    }
    if (pendingChanged) this._renderPending();
    while (this.recentList.childElementCount > MAX_RECENT) this.recentList.lastElementChild.remove();
    this._renderFiring();
  }

  /** Once a second: relative times. */
  tick() {
    tickTimes(this.root);
    tickPending(this.pendingList);
  }

  _renderPending() {
    const frag = document.createDocumentFragment();
    for (const a of [...this.pending.values()].sort(byUrgency)) frag.append(pendingItem(a));
    this.pendingList.replaceChildren(frag);
    this.pendingCount.textContent = String(this.pending.size);
    this.pendingSection.hidden = this.pending.size === 0;
  }

  _renderFiring() {
    const frag = document.createDocumentFragment();
    for (const a of [...this.firing.values()].sort(byUrgency)) {
      const li = alertItem(a, "started_at");
      if (this.decorate) this.decorate(li, a);
      frag.append(li);
    }
    this.firingList.replaceChildren(frag);
    this.count.textContent = String(this.firing.size);
    this.firingNone.hidden = this.firing.size > 0;
    this.recentNone.hidden = this.recentList.childElementCount > 0;
    this.onChange();
  }
}
