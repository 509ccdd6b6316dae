// The device view's charts, grouped (CPU, Load, Memory, ...), with the alert marks on them:
// threshold lines from the rules that apply to the device and bands for its pending and
// firing periods. One crosshair time is shared by every chart.

import { UNITS } from "./families.js";
import { ChartFigure } from "./figure.js";
import { localTime } from "./format.js";

/** Threshold lines and alert bands for a chart that draws `keys` (see docs/api.md "marks"). */
export function chartMarks(keys, marks, unit, now) {
  const drawn = new Set(keys);
  const thresholds = [];
  const seen = new Set();
  for (const th of (marks && marks.thresholds) || []) {
    if (!th.keys.some((k) => drawn.has(k)) || seen.has(th.rule)) continue;
    seen.add(th.rule);
    thresholds.push({ value: th.threshold, severity: th.severity, rule: th.rule,
      label: `${th.rule} ${th.op} ${unit.format(th.threshold)}` });
  }
  const bands = [];
  for (const p of (marks && marks.periods) || []) {
    if (p.metric !== null && !drawn.has(p.metric)) continue;
    const end = p.end === null ? now : p.end;
    const what = p.instance ? `${p.rule} (${p.instance})` : p.rule;
    const firedAt = p.state === "pending" ? null : (p.fired_at ?? p.start);
    const pendingTo = firedAt === null ? end : firedAt;
    if (pendingTo > p.start) {
      bands.push({ from: p.start, to: pendingTo, state: "pending", severity: p.severity, rule: p.rule,
        label: `${what} pending from ${localTime(p.start)}` });
    }
    if (firedAt !== null) {
      bands.push({ from: firedAt, to: end, state: "firing", severity: p.severity, rule: p.rule,
        label: `${what} firing ${localTime(firedAt)} – ${p.end === null ? "now" : localTime(p.end)}` });
    }
  }
  return { thresholds, bands };
}

export class ChartBoard {
  /** root: the charts container; handlers: {onZoom(a, b), onKey(action)}. */
  constructor(root, handlers) {
    this.root = root;
    this.figures = new Map(); // chart id -> ChartFigure
    this.sections = new Map(); // group id -> {el, body}
    this.at = null;
    this.pending = false;
    this.handlers = {
      ...handlers,
      onHover: (t) => this.crosshair(t),
    };
  }

  clear() {
    this.root.replaceChildren();
    this.figures.clear();
    this.sections.clear();
    this.at = null;
  }

  /** Share a crosshair time with every chart (at most once a frame). */
  crosshair(t) {
    this.at = t;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      for (const fig of this.figures.values()) if (fig.el.isConnected) fig.crosshair(this.at);
      this.root.dataset.crosshair = this.at === null ? "" : String(this.at);
    });
  }

  /** view: {groups, selected: Set, hottest, t, series, min, max, start, end, marks, now};
   * min/max (per key, when the points are averages) are drawn as a band around the line. */
  draw(view) {
    const keepGroups = new Set();
    const keepCharts = new Set();
    let previous = null;
    for (const group of view.groups) {
      const charts = group.charts
        .map((c) => [c, c.keys.filter((k) => view.selected.has(k) && k in view.series)])
        .filter(([, keys]) => keys.length);
      if (!charts.length) continue;
      keepGroups.add(group.id);
      const section = this._section(group, previous);
      previous = section.el;
      let prevFig = null;
      for (const [chart, keys] of charts) {
        keepCharts.add(chart.id);
        const fig = this._figure(chart, section.body, prevFig);
        prevFig = fig.el;
        const unit = UNITS[chart.unit] || UNITS.number;
        fig.draw({
          t: view.t, start: view.start, end: view.end,
          series: keys.map((k) => ({ key: k, name: chart.names[k], values: view.series[k],
            lo: view.min && view.min[k], hi: view.max && view.max[k], hottest: k === view.hottest })),
          ...chartMarks(keys, view.marks, unit, view.now),
        });
      }
    }
    for (const [id, fig] of this.figures) if (!keepCharts.has(id)) fig.el.remove();
    for (const [id, s] of this.sections) if (!keepGroups.has(id)) s.el.remove();
  }

  _section(group, after) {
    let s = this.sections.get(group.id);
    if (!s) {
      const el = document.createElement("section");
      el.className = "chart-group";
      el.dataset.group = group.id;
      el.dataset.testid = "chart-group";
      const h = document.createElement("h3");
      h.textContent = group.title;
      const body = document.createElement("div");
      body.className = "group-charts";
      el.append(h, body);
      s = { el, body };
      this.sections.set(group.id, s);
    }
    placeAfter(this.root, s.el, after);
    return s;
  }

  _figure(chart, parent, after) {
    let fig = this.figures.get(chart.id);
    if (!fig || fig.chart.title !== chart.title) {
      if (fig) fig.el.remove();
      fig = new ChartFigure({ ...chart, unit: UNITS[chart.unit] || UNITS.number }, this.handlers);
      this.figures.set(chart.id, fig);
    }
    placeAfter(parent, fig.el, after);
    return fig;
  }
}

function placeAfter(parent, el, after) {
  const ok = el.parentNode === parent && (after ? el.previousSibling === after : parent.firstChild === el);
  if (!ok) parent.insertBefore(el, after ? after.nextSibling : parent.firstChild);
}
