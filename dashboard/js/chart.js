// Small SVG charts drawn by hand: a sparkline for table rows and a time-series line chart.

const NS = "http://www.w3.org/2000/svg";
const SPARK_W = 100;
const SPARK_H = 24;
const PAD = { left: 58, right: 10, top: 10, bottom: 22 };
const ENVELOPE_MAX = 4; // series with a min-max band when points are averages

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

/** Closed path of the min-max envelope of averaged points; breaks like linePath. */
export function envelopePath(t, lo, hi, x, y, maxGap) {
  let d = "";
  let run = [];
  const flush = () => {
    if (run.length > 1) {
      const top = run.map((i) => `${x(t[i]).toFixed(1)},${y(hi[i]).toFixed(1)}`);
      const bottom = run.reverse().map((i) => `${x(t[i]).toFixed(1)},${y(lo[i]).toFixed(1)}`);
      d += `M${top.join("L")}L${bottom.join("L")}Z`;
    }
    run = [];
  };
  for (let i = 0; i < t.length; i += 1) {
    if (typeof lo[i] !== "number" || typeof hi[i] !== "number") {
      flush();
      continue;
    }
    if (run.length && t[i] - t[run[run.length - 1]] > maxGap) flush();
    run.push(i);
  }
  flush();
  return d;
}

function medianStep(t) {
  if (t.length < 3) return Infinity;
  const steps = [];
  for (let i = 1; i < t.length; i += 1) steps.push(t[i] - t[i - 1]);
  steps.sort((a, b) => a - b);
  return steps[Math.floor(steps.length / 2)];
}

function yRange(series, unit, thresholds) {
  let lo = 0;
  let hi = unit.max || 0;
  let dataHi = -Infinity;
  for (const s of series) {
    for (const values of [s.values, s.hi || [], s.lo || []]) {
      for (const v of values) {
        if (typeof v !== "number") continue;
        if (v > dataHi) dataHi = v;
        if (v < lo) lo = v;
      }
    }
  }
  if (!unit.max) {
    hi = Math.max(dataHi, 0);
    // a threshold near the data is worth the room; one far above would flatten the lines
    for (const th of thresholds) if (th.value > hi && th.value <= 3 * Math.max(hi, 1e-9)) hi = th.value * 1.05;
    hi = niceMax(hi);
  }
  if (lo < 0) lo = -niceMax(-lo);
  return [lo, hi];
}

function bandsLayer(bands, x, top, bottom, start, end) {
  const g = svgEl("g", { class: "bands" });
  for (const b of bands) {
    const a = Math.max(start, b.from);
    const z = Math.min(end, b.to);
    if (!(z > a)) continue;
    const rect = svgEl("rect", {
      x: x(a).toFixed(1), width: Math.max(1, x(z) - x(a)).toFixed(1), y: top, height: bottom - top,
      class: `band band-${b.state} sev-${b.severity}`, "data-testid": "alert-band",
      "data-state": b.state, "data-rule": b.rule,
    });
    const title = svgEl("title");
    title.textContent = b.label;
    rect.append(title);
    g.append(rect);
  }
  return g;
}

function thresholdLayer(thresholds, y, lo, hi, left, right) {
  const g = svgEl("g", { class: "thresholds" });
  for (const th of thresholds) {
    const off = th.value > hi || th.value < lo;
    const yy = off ? y(hi) : y(th.value);
    const line = svgEl("line", {
      x1: left, x2: right, y1: yy.toFixed(1), y2: yy.toFixed(1),
      class: `threshold sev-${th.severity}${off ? " off-scale" : ""}`, "data-testid": "threshold",
      "data-rule": th.rule, "data-value": th.value,
    });
    const label = svgEl("text", { x: right - 4, y: (yy - 3).toFixed(1), class: `th-label sev-${th.severity}` });
    label.textContent = `${off ? "↑ " : ""}${th.label}`;
    g.append(line, label);
  }
  return g;
}

/**
 * Draw a line chart into `svg` (its children are replaced).
 * spec: {t, series: [{name, values, hottest?}], start, end, unit: {format, max?},
 *        thresholds: [{value, label, severity, rule}], bands: [{from, to, state, severity, rule, label}]}
 * Returns the plot: {tAt(clientX), cursor(t) -> index | null, select(t1, t2), x, y}.
 */
export function lineChart(svg, spec) {
  const box = svg.getBoundingClientRect();
  const w = Math.max(200, Math.round(box.width) || 600);
  const h = Math.max(100, Math.round(box.height) || 180);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const { t, series, start, end, unit } = spec;
  const thresholds = spec.thresholds || [];
  const [lo, hi] = yRange(series, unit, thresholds);
  const left = PAD.left;
  const right = w - PAD.right;
  const x = (ts) => left + ((ts - start) / (end - start)) * (right - left);
  const y = (v) => h - PAD.bottom - ((v - lo) / (hi - lo)) * (h - PAD.top - PAD.bottom);

  const grid = svgEl("g", { class: "grid" });
  for (let i = 0; i <= 4; i += 1) {
    const v = lo + ((hi - lo) * i) / 4;
    const yy = y(v).toFixed(1);
    grid.append(svgEl("line", { x1: left, x2: right, y1: yy, y2: yy }));
    const label = svgEl("text", { x: left - 6, y: yy, class: "ylabel" });
    label.textContent = unit.format(v);
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
  svg.append(bandsLayer(spec.bands || [], x, PAD.top, h - PAD.bottom, start, end), grid);

  const maxGap = Math.max(3 * medianStep(t), 1);
  if (series.length <= ENVELOPE_MAX) {
    series.forEach((s, i) => {
      if (s.lo && s.hi && s.lo.length === t.length) {
        svg.append(svgEl("path", { d: envelopePath(t, s.lo, s.hi, x, y, maxGap), class: `envelope s${i % 8}` }));
      }
    });
  }
  series.forEach((s, i) => {
    const cls = `line s${i % 8}${s.hottest ? " hottest" : ""}`;
    svg.append(svgEl("path", { d: linePath(t, s.values, x, y, maxGap), class: cls, "data-key": s.key || "" }));
  });
  svg.append(thresholdLayer(thresholds, y, lo, hi, left, right));
  const sel = svgEl("rect", { class: "selection", y: PAD.top, height: h - PAD.top - PAD.bottom, x: 0, width: 0 });
  const cursor = svgEl("line", { class: "cursor", y1: PAD.top, y2: h - PAD.bottom, x1: -9, x2: -9 });
  svg.append(sel, cursor);
  const place = (xx) => {
    cursor.setAttribute("x1", xx);
    cursor.setAttribute("x2", xx);
  };

  return {
    x,
    y,
    tAt(clientX) {
      const rect = svg.getBoundingClientRect();
      const px = ((clientX - rect.left) / rect.width) * w;
      const at = start + ((px - left) / (right - left)) * (end - start);
      return Math.max(start, Math.min(end, at));
    },
    cursor(at) {
      if (at === null || !t.length || at < start || at > end) {
        place(-9);
        return null;
      }
      const i = nearest(t, at);
      place(x(t[i]).toFixed(1));
      return i;
    },
    select(a, b) {
      if (a === null) {
        sel.setAttribute("width", 0);
        return;
      }
      const x0 = x(Math.min(a, b));
      sel.setAttribute("x", x0.toFixed(1));
      sel.setAttribute("width", Math.max(0, x(Math.max(a, b)) - x0).toFixed(1));
    },
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
