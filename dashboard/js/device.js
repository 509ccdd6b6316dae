// The device view (#/device/<id>?range=..|from=..&to=..&keys=..): live facts from the
// WebSocket rows; every metric family the device sends, charted over a range you can move
// through (presets, custom, drag to zoom, pan), with its alert thresholds and periods.

import { AuthError, HttpError, deviceHistory } from "./api.js";
import { alertItem, byUrgency, pendingItem, tickPending, tickTimes } from "./alerts.js";
import { ChartBoard } from "./board.js";
import { conflictSentence } from "./conflict.js";
import { MAX_KEYS, catalogue, defaultKeys, hottestKey } from "./families.js";
import { ago, isoTime, localTime, now } from "./format.js";
import { FACTS, buildFacts } from "./facts.js";
import { Picker } from "./picker.js";
import { TimeBar } from "./timebar.js";
import * as tr from "./timerange.js";

const FIRST_KEYS = ["cpu.percent"];

/** The chart series for `known` keys (the families.js catalogue, by chart id). */
export function pickKeys(known, latest = {}) {
  const out = {};
  for (const g of catalogue(known, latest)) for (const c of g.charts) out[c.id] = c.keys;
  return out;
}

function refreshS(span) {
  return Math.min(120, Math.max(5, span / 120));
}

export class DeviceView {
  constructor(root, { getRow, firingFor, pendingFor = () => [], onAuth }) {
    Object.assign(this, { root, getRow, firingFor, pendingFor, onAuth });
    this.id = null;
    this.range = tr.FIT;
    this.chosen = null; // keys picked by the user; null: the default
    this.known = null; // the device's keys, newest values and first_seen, from the backend
    this.latest = {};
    this.firstSeen = null;
    this.data = null;
    this.abort = null;
    this.timer = 0;
    this.$ = (id) => root.querySelector(`[data-testid=${id}]`);
    this.message = this.$("device-message");
    this.facts = buildFacts(this.$("device-facts"));
    this.board = new ChartBoard(this.$("charts"), {
      onZoom: (a, b) => this.setRange(tr.fixed(a, b, now()), true),
      onKey: (action) => this.nav(action),
    });
    this.picker = new Picker(this.$("picker"), { onChange: (keys) => this.setKeys(keys) });
    this.timebar = new TimeBar(this.$("timebar"), {
      onRange: (range, push) => this.setRange(range, push),
      onNav: (action) => this.nav(action),
      onError: (text) => this._setMessage(text),
    });
    new ResizeObserver(() => this._redrawSoon()).observe(this.$("charts"));
  }

  /** Open device `id` with the view of the hash query (range, keys). */
  show(id, query = "") {
    const view = tr.parseView(query);
    if (id !== this.id) {
      this.id = id;
      this.alertSig = undefined;
      this.known = null;
      this.latest = {};
      this.firstSeen = null;
      this.data = null;
      this.row = null;
      this.board.clear();
      this.$("device-title").textContent = id;
      this.$("device-conflict").hidden = true;
    } else if (this.visible && tr.sameRange(view.range, this.range) && sameKeys(view.keys, this.chosen)) {
      return;
    }
    this.root.hidden = false;
    this.range = view.range;
    this.chosen = view.keys;
    const row = this.getRow(id);
    if (row) this.updateRow(row);
    this.refreshAlerts();
    this.load();
  }

  hide() {
    this.root.hidden = true;
    this.id = null;
    clearTimeout(this.timer);
    if (this.abort) this.abort.abort();
  }

  get visible() {
    return !this.root.hidden;
  }

  setRange(range, push) {
    this.range = range;
    this._url(push);
    this.load();
  }

  setKeys(keys) {
    this.chosen = keys;
    this._url(false);
    this.load();
  }

  /** "back", "forward" (a quarter of the span), "in", "out" (by 2). */
  nav(action) {
    const r = tr.resolve(this.range, now(), this.firstSeen, this._lastTs());
    const t = now();
    const next = {
      back: () => tr.pan(r.from, r.to, -0.25, t),
      forward: () => tr.pan(r.from, r.to, 0.25, t),
      in: () => tr.zoom(r.from, r.to, 0.5, t),
      out: () => tr.zoom(r.from, r.to, 2, t),
    }[action];
    if (next) this.setRange(next(), action === "in" || action === "out");
  }

  _url(push) {
    const q = tr.formatView({ range: this.range, keys: this.chosen });
    const hash = `#/device/${encodeURIComponent(this.id)}${q ? `?${q}` : ""}`;
    if (location.hash === hash) return;
    if (push) history.pushState(null, "", hash);
    else history.replaceState(null, "", hash);
  }

  /** A fresh row for this device (from the WebSocket or REST). */
  updateRow(row) {
    if (!row || row.id !== this.id) return;
    this.row = row;
    const status = this.$("device-status");
    if (status.textContent !== row.status) {
      status.textContent = row.status;
      status.className = `badge st-${row.status}`;
    }
    const conflict = this.$("device-conflict");
    const sentence = conflictSentence(row.identity_conflict);
    if (conflict.textContent !== sentence) conflict.textContent = sentence;
    conflict.hidden = !sentence;
    const seen = this.$("device-last-seen");
    seen.dateTime = isoTime(row.last_seen);
    seen.title = localTime(row.last_seen);
    FACTS.forEach(([, fmt], i) => {
      const text = fmt(row);
      if (this.facts[i].textContent !== text) this.facts[i].textContent = text;
    });
    this.tick();
  }

  refreshAlerts() {
    if (!this.id) return;
    const frag = document.createDocumentFragment();
    const firing = this.firingFor(this.id).sort(byUrgency);
    const pending = this.pendingFor(this.id);
    for (const a of firing) frag.append(alertItem(a, "started_at"));
    for (const a of pending) frag.append(pendingItem(a));
    this.$("device-alerts").replaceChildren(frag);
    // an alert started, fired or cleared: redraw its bands soon (one request for a burst)
    const sig = [...firing.map((a) => `f${a.key}`), ...pending.map((a) => `p${a.key}`)].sort().join("\n");
    if (this.alertSig !== undefined && sig !== this.alertSig && this.data && !this.soon) {
      this.soon = setTimeout(() => {
        this.soon = 0;
        if (this.visible) this.load();
      }, 500);
    }
    this.alertSig = sig;
  }

  tick() {
    if (!this.row) return;
    const text = ago(this.row.last_seen);
    const seen = this.$("device-last-seen");
    if (seen.textContent !== text) seen.textContent = text;
    tickTimes(this.$("device-alerts"));
    tickPending(this.$("device-alerts"));
  }

  // --- history ----------------------------------------------------------------------------

  _groups() {
    return this.known ? catalogue(this.known, this.latest) : [];
  }

  _wanted(groups) {
    if (!this.known) return this.chosen || FIRST_KEYS;
    return (this.chosen || defaultKeys(groups)).slice(0, MAX_KEYS);
  }

  _points() {
    const fig = this.root.querySelector(".plot");
    const width = fig ? fig.getBoundingClientRect().width : this.$("charts").clientWidth / 2;
    return Math.round(Math.min(1000, Math.max(120, width || 500)));
  }

  _request() {
    const t = now();
    const r = tr.resolve(this.range, t, this.firstSeen, this._lastTs());
    const keys = this._wanted(this._groups());
    return { from: Math.round(r.from), to: r.to, live: r.live, keys };
  }

  _get(id, req, signal) {
    return deviceHistory(id, { start: req.from, end: req.to, keys: req.keys.length ? req.keys : FIRST_KEYS,
      points: this._points(), signal });
  }

  _lastTs() {
    return this.row ? this.row.last_sample_ts : null;
  }

  _learn(body) {
    this.known = body.keys || [];
    this.latest = body.latest || {};
    if (typeof body.first_seen === "number") this.firstSeen = body.first_seen;
  }

  async load() {
    clearTimeout(this.timer);
    if (this.abort) this.abort.abort();
    const abort = new AbortController();
    this.abort = abort;
    const id = this.id;
    const first = this.known === null;
    let req = this._request();
    this.root.setAttribute("aria-busy", "true");
    try {
      let body = await this._get(id, req, abort.signal);
      this._learn(body);
      const again = this._request(); // the keys and the fitting range are known now
      if (first && (!sameKeys(again.keys, req.keys) || Math.abs(again.from - req.from) > 0.02 * (req.to - req.from))) {
        req = again;
        body = await this._get(id, req, abort.signal);
        this._learn(body);
      }
      if (abort.signal.aborted || id !== this.id) return;
      this.data = { ...body.history, marks: body.marks, request: req };
      this._setMessage("");
      if (body.device) this.updateRow(body.device);
      this._draw();
    } catch (err) {
      if (abort.signal.aborted) return;
      if (err instanceof AuthError) {
        await this.onAuth();
        if (id === this.id) this.load();
        return;
      }
      if (err instanceof HttpError && err.status === 404) {
        this._setMessage(`Unknown device ${id}.`);
        this.board.clear();
        return;
      }
      if (err instanceof HttpError && err.status === 400) {
        this._setMessage(`The backend refused this view: ${err.message}`);
        return;
      }
      this._setMessage(`Could not load history (${err.message}); retrying.`);
    } finally {
      if (this.abort === abort) this.root.removeAttribute("aria-busy");
    }
    if (id === this.id && req.live) this.timer = setTimeout(() => this._refresh(), refreshS(req.to - req.from) * 1000);
  }

  _refresh() {
    if (document.hidden) {
      this.timer = setTimeout(() => this._refresh(), 5000);
      return;
    }
    this.load();
  }

  _setMessage(text) {
    if (this.message.textContent !== text) this.message.textContent = text;
    this.message.hidden = !text;
  }

  _redrawSoon() {
    if (this.redrawPending || !this.data) return;
    this.redrawPending = true;
    requestAnimationFrame(() => {
      this.redrawPending = false;
      if (this.visible && this.data) this._draw();
    });
  }

  _draw() {
    const { t = [], series = {}, min, max, marks, request } = this.data;
    const groups = this._groups();
    const selected = new Set(request.keys);
    this.timebar.show(this.range, request, this.data);
    this.picker.set(groups, request.keys, defaultKeys(groups));
    this.board.draw({ groups, selected, t, series, min, max, start: request.from, end: request.to, marks,
      hottest: hottestKey(this.known, this.latest), now: now() });
    if (!this.$("charts").childElementCount) {
      this._setMessage(request.keys.length ? "No data for these metrics in this range." : "No metric picked: choose some under Metrics.");
    }
  }
}

function sameKeys(a, b) {
  if (a === null || b === null || a === undefined || b === undefined) return a === b;
  return a.length === b.length && a.every((k, i) => k === b[i]);
}
