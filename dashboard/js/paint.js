// Writes one device's figures into a pooled table row, touching the DOM only where a shown
// string changed (`view.shown` remembers what the row displays; bindRow resets it).

import { sparkPoints } from "./chart.js";
import { conflictText } from "./conflict.js";
import { ago, celsius, isoTime, level, localTime, now, pct } from "./format.js";
import { isProblem } from "./rank.js";

function chipsText(row) {
  const parts = Array.isArray(row.groups) ? [...row.groups] : [];
  if (row.labels) for (const [k, v] of Object.entries(row.labels)) parts.push(`${k}=${v}`);
  return parts.join(" · ");
}

function meter(shown, key, cell, value) {
  const text = pct(value);
  if (shown[key] === text) return;
  shown[key] = text;
  cell.val.textContent = text;
  const v = typeof value === "number" ? Math.max(0, Math.min(100, value)) : 0;
  // CSSOM is allowed by the CSP (style attributes are not); a transform needs no layout.
  cell.fill.style.transform = `scaleX(${v / 100})`;
  cell.fill.className = `fill ${level(key, value)}`;
}

/** "12 s ago" in the row, refreshed once a second. */
export function paintSeen(view, row, t = now()) {
  const text = ago(row.last_seen, t);
  if (view.shown.seen !== text) {
    view.shown.seen = text;
    view.cells.time.textContent = text;
  }
}

function paintAlert(view, row) {
  const { cells, shown, tr } = view;
  const sev = row.severity || "";
  const alert = sev ? `${sev}${row.firing > 1 ? ` ×${row.firing}` : ""}` : "–";
  if (shown.alert !== alert) {
    shown.alert = alert;
    tr.dataset.severity = sev;
    cells.sev.className = `sev ${sev ? `sev-${sev}` : ""}`;
    cells.sev.textContent = alert;
  }
  const conflict = conflictText(row.identity_conflict);
  if (shown.conflict !== conflict) {
    shown.conflict = conflict;
    tr.dataset.identityConflict = conflict ? "true" : "";
    cells.flag.hidden = !conflict;
    cells.flag.title = conflict;
    cells.flag.setAttribute("aria-label", conflict ? `Identity conflict: ${conflict}` : "");
  }
}

/** Write record `rec` ({row, rank}) into `view` ({tr, cells, shown}). */
export function paintRow(view, rec) {
  const { cells, shown, tr } = view;
  const row = rec.row;
  if (shown.status !== row.status) {
    shown.status = row.status;
    tr.dataset.status = row.status;
    cells.badge.className = `badge st-${row.status}`;
    cells.badge.textContent = row.status;
  }
  if (shown.rank !== rec.rank) {
    shown.rank = rec.rank;
    tr.classList.toggle("problem", isProblem(rec.rank));
  }
  meter(shown, "cpu", cells.cpu, row.cpu);
  meter(shown, "mem", cells.mem, row.memory);
  meter(shown, "disk", cells.disk, row.disk);
  const temp = celsius(row.temp);
  if (shown.temp !== temp) {
    shown.temp = temp;
    cells.temp.textContent = temp;
    cells.temp.className = `c-temp num ${level("temp", row.temp)}`;
  }
  const points = sparkPoints(row.spark);
  if (shown.spark !== points) {
    shown.spark = points;
    cells.spark.setAttribute("points", points);
  }
  const chips = chipsText(row);
  if (shown.chips !== chips) {
    shown.chips = chips;
    cells.chips.textContent = chips;
    cells.chips.title = chips;
  }
  paintAlert(view, row);
  if (shown.lastSeen !== row.last_seen) {
    shown.lastSeen = row.last_seen;
    cells.time.dateTime = isoTime(row.last_seen);
    cells.time.title = localTime(row.last_seen);
  }
  paintSeen(view, row);
}
