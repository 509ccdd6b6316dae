// Small SVG charts drawn by hand: a sparkline for table rows and a time-series line chart.

const NS = "http://www.w3.org/2000/svg";
const SPARK_W = 100;
const SPARK_H = 24;
const PAD = { left: 58, right: 10, top: 10, bottom: 22 };

export function svgEl(name, attrs = {}) {
  const el = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** An empty sparkline (0-100 % scale) to be filled by `spark()`. */
export function sparkline() {
  const svg = svgEl("svg", {
    class: "spark",
    viewBox: `0 0 ${SPARK_W} ${SPARK_H}`,
    preserveAspectRatio: "none",
    "aria-hidden": "true",
    focusable: "false",
  });
  svg.append(svgEl("polyline", { points: "" }));
  return svg;
}

/** Points attribute for percentages, oldest first; "" for fewer than 2 values. */
export function sparkPoints(values) {
  const vs = (values || []).filter((v) => typeof v === "number");
  if (vs.length < 2) return "";
  const step = SPARK_W / (vs.length - 1);
  return vs
    .map((v, i) => {
      const y = SPARK_H - 1 - (Math.max(0, Math.min(100, v)) / 100) * (SPARK_H - 2);
      return `${(i * step).toFixed(1)},${y.toFixed(1)}`;
    })
    .join(" ");
}

/** Round a maximum up to 1, 2, 2.5 or 5 times a power of ten. */
export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

const TIME_STEPS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

function timeTicks(start, end, maxTicks) {
  const span = end - start;
  const step = TIME_STEPS.find((s) => span / s <= maxTicks) || 86400 * 2;
  const tzOffset = new Date(start * 1000).getTimezoneOffset() * 60; // align to local hours
  const first = Math.ceil((start - tzOffset) / step) * step + tzOffset;
  const out = [];
  for (let t = first; t <= end; t += step) out.push(t);
  return { ticks: out, step };
}

function timeLabel(t, step) {
  const d = new Date(t * 1000);
  const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (step >= 86400) return d.toLocaleDateString([], { weekday: "short", day: "numeric" });
  if (step >= 21600) return `${d.toLocaleDateString([], { weekday: "short" })} ${hm}`;
  return hm;
}

/** Path data for one series; breaks at nulls and at gaps wider than `maxGap` seconds. */
export function linePath(t, values, x, y, maxGap) {
  let d = "";
  let pen = false;
  let prevT = null;
  for (let i = 0; i < t.length; i += 1) {
    const v = values[i];
    if (typeof v !== "number") {
      pen = false;
      continue;
    }
    if (pen && prevT !== null && t[i] - prevT > maxGap) pen = false;
    d += `${pen ? "L" : "M"}${x(t[i]).toFixed(1)},${y(v).toFixed(1)}`;
    pen = true;
    prevT = t[i];
  }
  return d;
}

function medianStep(t) {
  if (t.length < 3) return Infinity;
  const steps = [];
  for (let i = 1; i < t.length; i += 1) steps.push(t[i] - t[i - 1]);
  steps.sort((a, b) => a - b);
  return steps[Math.floor(steps.length / 2)];
}

/**
 * Draw a line chart into `svg` (its children are replaced).
 * spec: {t, series: [{name, values}], start, end, percent, format(v) -> string}
 * Returns a function (clientX) -> {t, values} | null for the hover readout.
 */
export function lineChart(svg, spec) {
  const box = svg.getBoundingClientRect();
  const w = Math.max(200, Math.round(box.width) || 600);
  const h = Math.max(100, Math.round(box.height) || 180);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const { t, series, start, end, percent, format } = spec;
  let top = percent ? 100 : 0;
  if (!percent) {
    for (const s of series) for (const v of s.values) if (typeof v === "number" && v > top) top = v;
    top = niceMax(top);
  }
  const x = (ts) => PAD.left + ((ts - start) / (end - start)) * (w - PAD.left - PAD.right);
  const y = (v) => h - PAD.bottom - (v / top) * (h - PAD.top - PAD.bottom);

  const grid = svgEl("g", { class: "grid" });
  for (let i = 0; i <= 4; i += 1) {
    const v = (top * i) / 4;
    const yy = y(v).toFixed(1);
    grid.append(svgEl("line", { x1: PAD.left, x2: w - PAD.right, y1: yy, y2: yy }));
    const label = svgEl("text", { x: PAD.left - 6, y: yy, class: "ylabel" });
    label.textContent = format(v);
    grid.append(label);
  }
  const { ticks, step } = timeTicks(start, end, Math.max(2, Math.floor(w / 90)));
  for (const tick of ticks) {
    const xx = x(tick).toFixed(1);
    grid.append(svgEl("line", { x1: xx, x2: xx, y1: PAD.top, y2: h - PAD.bottom, class: "v" }));
    const label = svgEl("text", { x: xx, y: h - 6, class: "xlabel" });
    label.textContent = timeLabel(tick, step);
    grid.append(label);
  }
  svg.append(grid);

  const maxGap = Math.max(3 * medianStep(t), 1);
  series.forEach((s, i) => {
    svg.append(svgEl("path", { d: linePath(t, s.values, x, y, maxGap), class: `line s${i % 8}` }));
  });
  const cursor = svgEl("line", { class: "cursor", y1: PAD.top, y2: h - PAD.bottom, x1: -9, x2: -9 });
  svg.append(cursor);

  return (clientX) => {
    if (clientX === null || !t.length) {
      cursor.setAttribute("x1", -9);
      cursor.setAttribute("x2", -9);
      return null;
    }
    const rect = svg.getBoundingClientRect();
    const px = ((clientX - rect.left) / rect.width) * w;
    const at = start + ((px - PAD.left) / (w - PAD.left - PAD.right)) * (end - start);
    const i = nearest(t, at);
    const xx = x(t[i]).toFixed(1);
    cursor.setAttribute("x1", xx);
    cursor.setAttribute("x2", xx);
    return { t: t[i], values: series.map((s) => s.values[i]) };
  };
}

/** Index of the timestamp closest to `at` in the ascending array `t`. */
export function nearest(t, at) {
  let lo = 0;
  let hi = t.length - 1;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (t[mid] < at) lo = mid + 1;
    else hi = mid;
  }
  if (lo > 0 && Math.abs(t[lo - 1] - at) < Math.abs(t[lo] - at)) return lo - 1;
  return lo;
}
