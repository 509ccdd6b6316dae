// The device view (#/device/<id>): live facts from the WebSocket rows, and history charts
// over a selectable range from GET /api/devices/<id>.

import { AuthError, HttpError, deviceHistory } from "./api.js";
import { alertItem, byUrgency, pendingItem, tickPending, tickTimes } from "./alerts.js";
import { conflictSentence } from "./conflict.js";
import { ChartFigure } from "./figure.js";
import { ago, bytes, celsius, isoTime, localTime, now, num, pct } from "./format.js";

export const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
const REFRESH_S = { "15m": 10, "1h": 15, "6h": 30, "24h": 60, "7d": 120 };
const BASE_KEYS = ["cpu.percent", "memory.used_percent"];
const POINTS = 500;

const perSecond = (v) => `${bytes(v)}/s`;
const percent = (v) => `${num(v, 1)}%`;
const degrees = (v) => `${num(v, 1)} °C`;

// Chart groups: which metric keys each draws. `family` matches `family` and `family[...]`.
const CHARTS = [
  { id: "cpu", title: "CPU", families: ["cpu.percent"], percent: true, format: percent },
  { id: "memory", title: "Memory used", families: ["memory.used_percent"], percent: true, format: percent },
  { id: "disk", title: "Disk used", families: ["disk.used_percent"], percent: true, format: percent, max: 6 },
  { id: "temp", title: "Temperature", families: ["temp.celsius"], format: degrees, max: 6 },
  {
    id: "net", title: "Network", families: ["net.rx_bytes_per_s", "net.tx_bytes_per_s"],
    format: perSecond, max: 6, skip: /\[lo\]$/,
  },
];

const FACTS = [
  ["CPU", (r) => pct(r.cpu)],
  ["Memory", (r) => pct(r.memory)],
  ["Disk (fullest)", (r) => pct(r.disk)],
  ["Temperature", (r) => celsius(r.temp)],
  ["Load (1 min)", (r) => num(r.load1, 2)],
  ["Interval", (r) => (typeof r.interval_s === "number" ? `${num(r.interval_s, 1)} s` : "–")],
  ["Firing alerts", (r) => num(r.firing)],
  ["Lost samples", (r) => num(r.lost)],
  ["Agent version", (r) => (r.agent && r.agent.agent_version) || "–"],
  ["Agent queue", (r) => (r.agent ? num(r.agent.queue_depth) : "–")],
  ["Agent dropped", (r) => (r.agent ? num(r.agent.dropped_total) : "–")],
  ["Sent, not committed", (r) => (r.agent && r.agent.uncommitted != null ? num(r.agent.uncommitted) : "–")],
  ["Agent memory", (r) => (r.agent && r.agent.rss_bytes ? bytes(r.agent.rss_bytes) : "–")],
];

function family(key) {
  const i = key.indexOf("[");
  return i < 0 ? key : key.slice(0, i);
}

function instance(key) {
  const i = key.indexOf("[");
  return i < 0 ? "" : key.slice(i + 1, -1);
}

/** The keys each chart draws, from the device's known keys. */
export function pickKeys(known) {
  const out = {};
  for (const c of CHARTS) {
    const keys = known
      .filter((k) => c.families.includes(family(k)) && !(c.skip && c.skip.test(k)))
      .sort((a, b) => instance(a).localeCompare(instance(b)) || a.localeCompare(b));
    if (keys.length) out[c.id] = keys.slice(0, c.max || 1);
  }
  return out;
}

function seriesName(chart, key) {
  const inst = instance(key);
  if (chart.id === "net") return `${inst} ${key.startsWith("net.rx") ? "rx" : "tx"}`;
  return inst || chart.title;
}

export class DeviceView {
  constructor(root, { getRow, firingFor, pendingFor = () => [], onAuth }) {
    this.root = root;
    this.getRow = getRow;
    this.firingFor = firingFor;
    this.pendingFor = pendingFor;
    this.onAuth = onAuth;
    this.id = null;
    this.range = "1h";
    this.keys = null; // all metric keys the backend knows for this device
    this.data = null; // last history answer
    this.figures = new Map(); // chart id -> ChartFigure
    this.abort = null;
    this.timer = 0;
    this.$ = (id) => root.querySelector(`[data-testid=${id}]`);
    this.charts = this.$("charts");
    this.message = this.$("device-message");
    this.facts = this._buildFacts();
    for (const b of root.querySelectorAll("[data-range]")) {
      b.addEventListener("click", () => this.setRange(b.dataset.range));
    }
    new ResizeObserver(() => this._redrawSoon()).observe(this.charts);
  }

  show(id) {
    const same = id === this.id;
    this.root.hidden = false;
    if (!same) {
      this.id = id;
      this.keys = null;
      this.data = null;
      this.charts.replaceChildren();
      this.figures.clear();
      this.$("device-title").textContent = id;
      this.$("device-conflict").hidden = true;
      this.row = null;
    }
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

  setRange(range) {
    if (!(range in RANGES) || range === this.range) return;
    this.range = range;
    for (const b of this.root.querySelectorAll("[data-range]")) {
      b.setAttribute("aria-pressed", String(b.dataset.range === range));
    }
    this.load();
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
    const list = this.$("device-alerts");
    const frag = document.createDocumentFragment();
    for (const a of this.firingFor(this.id).sort(byUrgency)) frag.append(alertItem(a, "started_at"));
    for (const a of this.pendingFor(this.id)) frag.append(pendingItem(a));
    list.replaceChildren(frag);
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

  async load() {
    clearTimeout(this.timer);
    if (this.abort) this.abort.abort();
    const abort = new AbortController();
    this.abort = abort;
    const id = this.id;
    const end = now();
    const start = end - RANGES[this.range];
    this.root.setAttribute("aria-busy", "true");
    try {
      const wanted = this.keys ? Object.values(pickKeys(this.keys)).flat() : BASE_KEYS;
      let body = await deviceHistory(id, { start, end, keys: wanted, points: POINTS, signal: abort.signal });
      const all = Object.values(pickKeys(body.keys || [])).flat();
      if (all.some((k) => !wanted.includes(k))) {
        body = await deviceHistory(id, { start, end, keys: all, points: POINTS, signal: abort.signal });
      }
      if (abort.signal.aborted || id !== this.id) return;
      this.keys = body.keys || [];
      this.data = { ...body.history, start, end };
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
        this.charts.replaceChildren();
        return;
      }
      this._setMessage(`Could not load history (${err.message}); retrying.`);
    } finally {
      if (this.abort === abort) this.root.removeAttribute("aria-busy");
    }
    if (id === this.id) this.timer = setTimeout(() => this._refresh(), REFRESH_S[this.range] * 1000);
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
      if (this.visible) this._draw();
    });
  }

  _draw() {
    const { t = [], series = {}, resolution, start, end } = this.data;
    this.$("resolution").textContent = resolution ? `resolution: ${resolution}` : "";
    const picked = pickKeys(this.keys);
    const keep = new Set();
    for (const chart of CHARTS) {
      const keys = (picked[chart.id] || []).filter((k) => k in series);
      if (!keys.length) continue;
      keep.add(chart.id);
      let fig = this.figures.get(chart.id);
      if (!fig) {
        fig = new ChartFigure(chart);
        this.figures.set(chart.id, fig);
      }
      if (!fig.el.isConnected) this.charts.append(fig.el);
      const named = keys.map((k) => ({ name: seriesName(chart, k), values: series[k] }));
      fig.draw({ t, start, end, percent: chart.percent, series: named });
    }
    for (const [id, fig] of this.figures) if (!keep.has(id)) fig.el.remove();
  }

  _buildFacts() {
    const dl = this.$("device-facts");
    const dds = FACTS.map(([label]) => {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = "–";
      div.append(dt, dd);
      dl.append(div);
      return dd;
    });
    return dds;
  }
}
