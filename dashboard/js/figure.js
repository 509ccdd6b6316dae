// One chart card of the device view: title, legend with current (or crosshair) values, plot.
// Pointer: hover moves the crosshair of every chart (through `onHover`), a drag selects a span
// to zoom into (`onZoom`). Keyboard on the focused plot: ← → pan, + − zoom (`onKey`).

import { lineChart, svgEl } from "./chart.js";
import { localTime } from "./format.js";

const DRAG_MIN_PX = 6;
const KEYS = { ArrowLeft: "back", ArrowRight: "forward", "+": "in", "=": "in", "-": "out", _: "out" };

function lastNumber(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (typeof values[i] === "number") return values[i];
  return null;
}

function span(cls, text = "") {
  const el = document.createElement("span");
  el.className = cls;
  el.textContent = text;
  return el;
}

export class ChartFigure {
  /** chart: {id, title, unit: {format}}; handlers: {onHover(t|null), onZoom(a, b), onKey(action)} */
  constructor(chart, handlers) {
    this.chart = chart;
    this.h = handlers;
    this.spec = null;
    this.plot = null;
    this.drag = null;
    this.el = document.createElement("figure");
    this.el.className = "chart";
    this.el.dataset.testid = "chart";
    this.el.dataset.chart = chart.id;
    const cap = document.createElement("figcaption");
    this.when = span("when");
    this.legend = document.createElement("ul");
    this.legend.className = "legend";
    cap.append(span("title", chart.title), this.when, this.legend);
    this.svg = svgEl("svg", {
      class: "plot", role: "img", tabindex: "0",
      "aria-label": `${chart.title} over time. Drag to zoom; arrow keys pan, plus and minus zoom.`,
    });
    const empty = document.createElement("p");
    empty.className = "empty-chart";
    empty.textContent = "No data in this range.";
    this.el.append(cap, this.svg, empty);
    this._listen();
  }

  _listen() {
    const svg = this.svg;
    svg.addEventListener("pointerdown", (ev) => {
      if (!this.plot || ev.button !== 0) return;
      this.drag = { x: ev.clientX, t: this.plot.tAt(ev.clientX) };
      svg.setPointerCapture(ev.pointerId);
    });
    svg.addEventListener("pointermove", (ev) => {
      if (!this.plot) return;
      const at = this.plot.tAt(ev.clientX);
      if (this.drag) {
        this.drag.at = at;
        this.plot.select(this.drag.t, at);
      }
      this.h.onHover(at);
    });
    svg.addEventListener("pointerup", (ev) => {
      const drag = this.drag;
      this.drag = null;
      if (!drag || !this.plot) return;
      this.plot.select(null);
      if (Math.abs(ev.clientX - drag.x) >= DRAG_MIN_PX) this.h.onZoom(drag.t, this.plot.tAt(ev.clientX));
    });
    svg.addEventListener("pointercancel", () => {
      this.drag = null;
      if (this.plot) this.plot.select(null);
    });
    svg.addEventListener("pointerleave", () => {
      if (!this.drag) this.h.onHover(null);
    });
    svg.addEventListener("keydown", (ev) => {
      const action = KEYS[ev.key];
      if (!action || ev.altKey || ev.ctrlKey || ev.metaKey) return;
      ev.preventDefault();
      this.h.onKey(action);
    });
  }

  /** spec: {t, series: [{name, key, values, hottest}], start, end, thresholds, bands}. */
  draw(spec) {
    this.spec = { ...spec, unit: this.chart.unit };
    this.plot = lineChart(this.svg, this.spec);
    const hasData = spec.series.some((s) => s.values.some((v) => typeof v === "number"));
    this.el.classList.toggle("nodata", !hasData);
    this.el.dataset.thresholds = String((spec.thresholds || []).length);
    // a redraw (new samples) keeps the selection of a drag under way, and the crosshair
    if (this.drag && this.drag.at !== undefined) this.plot.select(this.drag.t, this.drag.at);
    const held = this.el.dataset.crosshair;
    if (held) this.crosshair(Number(held));
    else this._legend(spec.series.map((s) => lastNumber(s.values)));
  }

  _legend(values) {
    const items = this.spec.series;
    if (this.legend.childElementCount !== items.length) {
      this.legend.replaceChildren(
        ...items.map((_s, i) => {
          const li = document.createElement("li");
          li.append(span(`swatch s${i % 8}`), span("name"), span("v"));
          return li;
        }),
      );
    }
    [...this.legend.children].forEach((li, i) => {
      const s = items[i];
      li.dataset.key = s.key || "";
      li.classList.toggle("hottest", Boolean(s.hottest));
      li.children[1].textContent = s.hottest ? `${s.name} (hottest)` : s.name;
      li.children[2].textContent = values[i] === null ? "–" : this.chart.unit.format(values[i]);
    });
  }

  /** Put the crosshair at `t` (null: take it away and show the newest values). */
  crosshair(t) {
    if (!this.plot) return;
    const i = this.plot.cursor(t);
    this.el.classList.toggle("hovering", i !== null);
    if (i === null) {
      this.when.textContent = "";
      delete this.el.dataset.crosshair;
      this._legend(this.spec.series.map((s) => lastNumber(s.values)));
      return;
    }
    this.when.textContent = localTime(this.spec.t[i]);
    this.el.dataset.crosshair = String(this.spec.t[i]);
    this._legend(this.spec.series.map((s) => (typeof s.values[i] === "number" ? s.values[i] : null)));
  }
}
