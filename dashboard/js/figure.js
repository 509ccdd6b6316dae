// One chart card of the device view: title, legend with current (or hovered) values, plot.

import { lineChart, svgEl } from "./chart.js";
import { localTime } from "./format.js";

function lastNumber(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (typeof values[i] === "number") return values[i];
  return null;
}

function span(cls) {
  const el = document.createElement("span");
  el.className = cls;
  return el;
}

export class ChartFigure {
  /** chart: {id, title, format(v)} from the device view's chart list. */
  constructor(chart) {
    this.chart = chart;
    this.spec = null;
    this.hover = () => null;
    this.el = document.createElement("figure");
    this.el.className = "chart";
    this.el.dataset.testid = "chart";
    this.el.dataset.chart = chart.id;
    const cap = document.createElement("figcaption");
    const title = span("title");
    title.textContent = chart.title;
    this.when = span("when");
    this.legend = document.createElement("ul");
    this.legend.className = "legend";
    cap.append(title, this.when, this.legend);
    this.svg = svgEl("svg", { class: "plot", role: "img", "aria-label": `${chart.title} over time` });
    const empty = document.createElement("p");
    empty.className = "empty-chart";
    empty.textContent = "No data in this range.";
    this.el.append(cap, this.svg, empty);
    this.svg.addEventListener("pointermove", (ev) => this._hover(ev.clientX));
    this.svg.addEventListener("pointerleave", () => this._hover(null));
  }

  /** spec: {t, series: [{name, values}], start, end, percent} (see chart.js lineChart). */
  draw(spec) {
    this.spec = { ...spec, format: this.chart.format };
    this.hover = lineChart(this.svg, this.spec);
    const hasData = spec.series.some((s) => s.values.some((v) => typeof v === "number"));
    this.el.classList.toggle("nodata", !hasData);
    this._legend(spec.series.map((s) => lastNumber(s.values)));
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
      li.children[1].textContent = items[i].name;
      li.children[2].textContent = values[i] === null ? "–" : this.chart.format(values[i]);
    });
  }

  _hover(clientX) {
    if (!this.spec) return;
    const at = this.hover(clientX);
    this.el.classList.toggle("hovering", Boolean(at));
    if (!at) {
      this.when.textContent = "";
      this._legend(this.spec.series.map((s) => lastNumber(s.values)));
      return;
    }
    this.when.textContent = localTime(at.t);
    this._legend(at.values.map((v) => (typeof v === "number" ? v : null)));
  }
}
