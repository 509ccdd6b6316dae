// Top-N lists (hottest, fullest, busiest) and two small fleet charts (mean CPU, devices
// online), refreshed once a second from the table's records: no extra requests.

import { celsius, num, pct } from "./format.js";

const TOP_N = 5;
const HISTORY = 120; // points (one per second: two minutes)
const SVG = "http://www.w3.org/2000/svg";

const LISTS = [
  ["hottest", "temp", celsius],
  ["fullest", "disk", pct],
  ["busiest", "cpu", pct],
];

/** The `n` rows with the highest `key` (online devices with a value only), highest first. */
export function topN(rows, key, n = TOP_N) {
  const best = [];
  for (const row of rows) {
    const v = row[key];
    if (row.status !== "online" || typeof v !== "number") continue;
    if (best.length === n && v <= best[n - 1][key]) continue;
    best.push(row);
    best.sort((a, b) => b[key] - a[key] || (a.id < b.id ? -1 : 1));
    if (best.length > n) best.pop();
  }
  return best;
}

/** Polyline points of `values` in a width x height box (0..max scaled to the height). */
export function linePoints(values, width, height, max) {
  if (values.length < 2) return "";
  const top = max > 0 ? max : 1;
  const step = width / (HISTORY - 1);
  const x0 = width - step * (values.length - 1);
  return values.map((v, i) => `${(x0 + i * step).toFixed(1)},${(height - (v / top) * height).toFixed(1)}`).join(" ");
}

export class Insights {
  constructor(root) {
    this.root = root;
    this.cpu = [];
    this.online = [];
  }

  /** Once a second, with every row the page knows. */
  refresh(rows) {
    if (this.root.hidden) return;
    for (const [name, key, fmt] of LISTS) this._list(name, topN(rows, key), key, fmt);
    let sum = 0;
    let n = 0;
    let online = 0;
    for (const row of rows) {
      if (row.status !== "online") continue;
      online += 1;
      if (typeof row.cpu === "number") {
        sum += row.cpu;
        n += 1;
      }
    }
    this._chart("cpu", this.cpu, n ? sum / n : 0, 100, (v) => `${pct(v)} mean CPU`);
    this._chart("online", this.online, online, rows.length, (v) => `${num(v)} online`);
  }

  _list(name, rows, key, fmt) {
    const ol = this.root.querySelector(`[data-testid=top-${name}]`);
    const items = rows.map((row) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = `#/device/${encodeURIComponent(row.id)}`;
      a.textContent = row.id;
      const v = document.createElement("span");
      v.className = "v";
      v.textContent = fmt(row[key]);
      li.append(a, v);
      return li;
    });
    const text = rows.map((r) => `${r.id}:${fmt(r[key])}`).join("|");
    if (ol.dataset.shown === text) return;
    ol.dataset.shown = text;
    ol.replaceChildren(...items);
  }

  _chart(name, series, value, max, label) {
    series.push(value);
    if (series.length > HISTORY) series.shift();
    const fig = this.root.querySelector(`[data-testid=agg-${name}]`);
    let line = fig.querySelector("polyline");
    if (!line) {
      const svg = document.createElementNS(SVG, "svg");
      svg.setAttribute("viewBox", "0 0 240 40");
      svg.setAttribute("preserveAspectRatio", "none");
      svg.setAttribute("class", "agg-plot");
      svg.setAttribute("aria-hidden", "true");
      line = document.createElementNS(SVG, "polyline");
      svg.append(line);
      fig.prepend(svg);
    }
    line.setAttribute("points", linePoints(series, 240, 40, max));
    const cap = fig.querySelector("figcaption");
    const text = label(value);
    if (cap.textContent !== text) cap.textContent = text;
  }
}
