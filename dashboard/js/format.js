// Formatting helpers and the server clock (pure except for Date.now).

let offsetS = 0; // server clock minus browser clock, from summary.now

/** Remember the server's time so that "last seen" does not depend on the browser's clock. */
export function syncClock(serverNow) {
  if (typeof serverNow === "number" && Number.isFinite(serverNow)) {
    offsetS = serverNow - Date.now() / 1000;
  }
}

/** Current time in unix seconds on the server's clock. */
export function now() {
  return Date.now() / 1000 + offsetS;
}

/** "just now", "12 s ago", "5 min ago", "3 h ago", "2 d ago"; "never" for null. */
export function ago(ts, at = now()) {
  if (typeof ts !== "number") return "never";
  const s = Math.max(0, at - ts);
  if (s < 2) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/** Absolute local date and time for tooltips and datetime attributes. */
export function isoTime(ts) {
  return typeof ts === "number" ? new Date(ts * 1000).toISOString() : "";
}

export function localTime(ts) {
  return typeof ts === "number" ? new Date(ts * 1000).toLocaleString() : "";
}

export function pct(v) {
  return typeof v === "number" ? `${Math.round(v)}%` : "–";
}

export function celsius(v) {
  return typeof v === "number" ? `${Math.round(v)} °C` : "–";
}

export function num(v, digits = 0) {
  if (typeof v !== "number") return "–";
  return v.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

const UNITS = ["B", "KB", "MB", "GB", "TB"];

/** 1536 -> "1.5 KB" (decimal units, as network rates are usually shown). */
export function bytes(v) {
  if (typeof v !== "number") return "–";
  let i = 0;
  let x = Math.abs(v);
  while (x >= 1000 && i < UNITS.length - 1) {
    x /= 1000;
    i += 1;
  }
  return `${x < 10 && i > 0 ? x.toFixed(1) : Math.round(x)} ${UNITS[i]}`;
}

/** Usage level of a percentage or temperature: "", "warn" or "crit". */
export function level(kind, v) {
  if (typeof v !== "number") return "";
  const [warn, crit] = kind === "temp" ? [70, 80] : [80, 90];
  if (v >= crit) return "crit";
  if (v >= warn) return "warn";
  return "";
}

const pad2 = (n) => String(n).padStart(2, "0");

/** Local wall-clock time "12:03:04" of unix seconds `ts`; "" for null. */
export function clockTime(ts) {
  if (typeof ts !== "number" || !Number.isFinite(ts)) return "";
  const d = new Date(ts * 1000);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/** A duration for people: "40 s", "5 min", "2 h" (whole units, rounded down). */
export function duration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h`;
}
