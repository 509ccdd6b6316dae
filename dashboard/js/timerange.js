// Time ranges of the device view and their place in the URL. Pure: no DOM.
//
// A range is one of
//   {kind: "fit"}                    the default: the device's data, up to the last hour
//   {kind: "preset", preset: "6h"}   the last 6 hours, following the clock
//   {kind: "fixed", from, to}        unix seconds (a custom range, a zoom or a pan)
// The hash is `#/device/<id>?range=6h` or `?from=<unix>&to=<unix>`, plus `&keys=a,b` for the
// picker's choice (commas inside `[...]` belong to a key, as in the API).

export const PRESETS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };
export const MIN_SPAN = 30;
export const MAX_SPAN = 400 * 86400;
const FIT_MIN = 60;
const FIT_MAX = 3600;

export const FIT = Object.freeze({ kind: "fit" });

/**
 * The default range ("fit"): from just before the device's first sample (`firstSeen`), at
 * least FIT_MIN long (a new device's data grows from the left edge instead of being a sliver
 * at the right of an hour) and at most the last hour. For a device silent for over half an
 * hour: the hour before its last sample (`lastTs`). Returns {from, to}.
 */
export function fitRange(firstSeen, now, lastTs) {
  let end = now;
  if (typeof lastTs === "number" && now - lastTs > FIT_MAX / 2) end = lastTs + 60;
  const age = end - firstSeen;
  if (typeof firstSeen !== "number" || !(age >= 0) || age * 1.05 >= FIT_MAX) {
    return { from: end - FIT_MAX, to: end };
  }
  const from = firstSeen - Math.max(2, age * 0.05);
  return { from, to: Math.max(end, from + FIT_MIN) };
}

/** {from, to, live}: live ranges end at (or after) `now` and are refreshed. */
export function resolve(range, now, firstSeen, lastTs) {
  if (range.kind === "preset") return { from: now - PRESETS[range.preset], to: now, live: true };
  if (range.kind === "fixed") return { from: range.from, to: range.to, live: false };
  const r = fitRange(firstSeen, now, lastTs);
  return { ...r, live: r.to >= now };
}

function clampSpan(from, to, now) {
  let span = Math.min(MAX_SPAN, Math.max(MIN_SPAN, to - from));
  const mid = (from + to) / 2;
  from = mid - span / 2;
  let end = from + span;
  if (end > now) {
    from -= end - now;
    end = now;
  }
  span = end - from;
  return { kind: "fixed", from: Math.round(from), to: Math.round(from + span) };
}

/** A fixed range [a, b] (either order), at least MIN_SPAN long and not past `now`. */
export function fixed(a, b, now) {
  return clampSpan(Math.min(a, b), Math.max(a, b), now);
}

/** Zoom by `factor` (< 1 in, > 1 out) around `center` (default: the middle). */
export function zoom(from, to, factor, now, center = (from + to) / 2) {
  const left = (center - from) * factor;
  const right = (to - center) * factor;
  return clampSpan(center - left, center + right, now);
}

/** Move by `fraction` of the span (negative: back in time); never past `now`. */
export function pan(from, to, fraction, now) {
  const shift = (to - from) * fraction;
  return clampSpan(from + shift, to + shift, now);
}

/** Split `a,disk.used_percent[/x,y]` into keys: a comma inside [...] belongs to a key. */
export function splitKeys(raw) {
  const keys = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < raw.length; i += 1) {
    const c = raw[i];
    if (c === "[") depth += 1;
    else if (c === "]") depth = Math.max(0, depth - 1);
    else if (c === "," && depth === 0) {
      keys.push(raw.slice(start, i));
      start = i + 1;
    }
  }
  keys.push(raw.slice(start));
  return [...new Set(keys.filter(Boolean))];
}

const UNIX = /^\d{1,11}(\.\d{1,3})?$/;
const METRIC_KEY = /^[a-z][a-z0-9_.]{0,63}(\[[^[\]]{1,200}\])?$/; // the protocol's, as the API checks

/** The view of a hash query ("range=6h&keys=..."): {range, keys (null: default)}. */
export function parseView(query) {
  const q = new URLSearchParams(query || "");
  let range = FIT;
  const preset = q.get("range");
  const from = q.get("from");
  const to = q.get("to");
  if (preset && preset in PRESETS) range = { kind: "preset", preset };
  else if (from && to && UNIX.test(from) && UNIX.test(to) && Number(from) < Number(to)) {
    range = { kind: "fixed", from: Number(from), to: Number(to) };
  }
  const raw = q.get("keys");
  return { range, keys: raw === null ? null : splitKeys(raw).filter((k) => METRIC_KEY.test(k)) };
}

/** The hash query for a view (the inverse of parseView). */
export function formatView({ range, keys }) {
  const q = new URLSearchParams();
  if (range.kind === "preset") q.set("range", range.preset);
  else if (range.kind === "fixed") {
    q.set("from", String(Math.round(range.from)));
    q.set("to", String(Math.round(range.to)));
  }
  if (keys) q.set("keys", keys.join(","));
  return q.toString().replace(/%2C/g, ",").replace(/%2F/g, "/");
}

export function sameRange(a, b) {
  if (a.kind !== b.kind) return false;
  if (a.kind === "preset") return a.preset === b.preset;
  if (a.kind === "fixed") return a.from === b.from && a.to === b.to;
  return true;
}

function spanText(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 360) / 10} h`;
  return `${Math.round(s / 8640) / 10} d`;
}

/** "raw samples, 240 points" or "5 min averages (stored buckets), 288 points". */
export function resolutionText(history) {
  const n = (history.t || []).length;
  const points = `${n} point${n === 1 ? "" : "s"}`;
  if (!history.resolution || history.resolution === "raw") return `raw samples, ${points}`;
  const step = parseFloat(history.resolution);
  const from = { buckets: " from stored 5 min buckets", mixed: " from samples and 5 min buckets" };
  return `${spanText(step)} averages${from[history.source] || ""}, ${points}`;
}

/** A short label of the range: "last 6 h", "since first sample (12 min)", or from – to. */
export function rangeText(range, resolved, fmt) {
  if (range.kind === "preset") return `last ${spanText(PRESETS[range.preset])}`;
  if (range.kind === "fit" && resolved.live !== false) return `from ${fmt(resolved.from)} (fits the data)`;
  return `${fmt(resolved.from)} – ${fmt(resolved.to)} (${spanText(resolved.to - resolved.from)})`;
}
