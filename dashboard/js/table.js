// The fleet table. One <tr> per device, kept in a Map and updated cell by cell: an update
// writes to the DOM only where a displayed string changed, and rows are re-ordered at most
// once per second, and only when a rank changed or devices came or went.

import { sparkPoints } from "./chart.js";
import { ago, celsius, isoTime, level, localTime, now, pct } from "./format.js";
import { conflictText } from "./conflict.js";
import { compare, isProblem, passesFilter, rank } from "./rank.js";
import { createRow } from "./row.js";

const SORT_EVERY_MS = 1000;

export class FleetTable {
  constructor(tbody, { onOpen, onCounts }) {
    this.tbody = tbody;
    this.onOpen = onOpen;
    this.onCounts = onCounts;
    this.records = new Map(); // id -> {id, row, rank, tr, cells, shown, visible}
    this.filter = "all";
    this.query = "";
    this.orderDirty = false;
    this.lastSort = 0;
    this.sortTimer = 0;
    tbody.addEventListener("click", (ev) => this._onClick(ev));
    tbody.addEventListener("keydown", (ev) => this._onKey(ev));
  }

  get(id) {
    const rec = this.records.get(id);
    return rec ? rec.row : null;
  }

  get size() {
    return this.records.size;
  }

  /** A snapshot: the rows it lists replace everything; existing elements are reused. */
  replaceAll(rows) {
    const seen = new Set();
    const fresh = document.createDocumentFragment();
    for (const row of rows) {
      seen.add(row.id);
      this._upsert(row, fresh);
    }
    for (const id of [...this.records.keys()]) if (!seen.has(id)) this._drop(id);
    this.tbody.append(fresh);
    this._sortNow();
  }

  /** An update: only the rows that changed. */
  update(rows, removed = []) {
    const fresh = document.createDocumentFragment();
    for (const row of rows) this._upsert(row, fresh);
    for (const id of removed) this._drop(id);
    if (fresh.childNodes.length) this.tbody.append(fresh);
    if (this.orderDirty) this._scheduleSort();
  }

  setFilter(filter) {
    this.filter = filter;
    this._refilter();
  }

  setQuery(query) {
    this.query = query.trim().toLowerCase();
    this._refilter();
  }

  /** Once a second: relative times, and the counts per filter. */
  tick() {
    const t = now();
    for (const rec of this.records.values()) this._setSeen(rec, t);
    this._counts();
  }

  focusRow(id) {
    const rec = this.records.get(id);
    if (rec && !rec.tr.hidden) rec.tr.focus();
  }

  // --- internals ------------------------------------------------------------------------

  _upsert(row, fresh) {
    let rec = this.records.get(row.id);
    if (!rec) {
      const { tr, cells } = createRow(row.id);
      rec = { id: row.id, row, rank: rank(row), tr, cells, shown: {}, visible: true };
      this.records.set(row.id, rec);
      fresh.append(tr);
      this.orderDirty = true;
    } else {
      const r = rank(row);
      if (r !== rec.rank) {
        rec.rank = r;
        this.orderDirty = true;
      }
      rec.row = row;
    }
    this._render(rec);
    this._applyVisibility(rec);
  }

  _drop(id) {
    const rec = this.records.get(id);
    if (!rec) return;
    rec.tr.remove();
    this.records.delete(id);
  }

  /** Write only what changed since the last render of this row. */
  _render(rec) {
    const { row, cells, shown, tr } = rec;
    if (shown.status !== row.status) {
      shown.status = row.status;
      tr.dataset.status = row.status;
      cells.badge.className = `badge st-${row.status}`;
      cells.badge.textContent = row.status;
    }
    const rk = String(rec.rank);
    if (shown.rank !== rk) {
      shown.rank = rk;
      tr.classList.toggle("problem", isProblem(rec.rank));
    }
    this._meter(rec, "cpu", cells.cpu, row.cpu);
    this._meter(rec, "mem", cells.mem, row.memory);
    this._meter(rec, "disk", cells.disk, row.disk);
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
    if (shown.lastSeen !== row.last_seen) {
      shown.lastSeen = row.last_seen;
      cells.time.dateTime = isoTime(row.last_seen);
      cells.time.title = localTime(row.last_seen);
    }
    this._setSeen(rec, now());
  }

  _meter(rec, key, cell, value) {
    const text = pct(value);
    if (rec.shown[key] === text) return;
    rec.shown[key] = text;
    cell.val.textContent = text;
    const v = typeof value === "number" ? Math.max(0, Math.min(100, value)) : 0;
    // CSSOM is allowed by the CSP (style attributes are not); a transform needs no layout.
    cell.fill.style.transform = `scaleX(${v / 100})`;
    cell.fill.className = `fill ${level(key, value)}`;
  }

  _setSeen(rec, t) {
    const text = ago(rec.row.last_seen, t);
    if (rec.shown.seen !== text) {
      rec.shown.seen = text;
      rec.cells.time.textContent = text;
    }
  }

  _matches(rec) {
    return (
      passesFilter(this.filter, rec.row.status, rec.rank) &&
      (!this.query || rec.id.toLowerCase().includes(this.query))
    );
  }

  _applyVisibility(rec) {
    const visible = this._matches(rec);
    if (visible !== rec.visible) {
      rec.visible = visible;
      rec.tr.hidden = !visible;
    }
  }

  _refilter() {
    for (const rec of this.records.values()) this._applyVisibility(rec);
    this._counts();
  }

  _counts() {
    const counts = { all: 0, problems: 0, offline: 0, online: 0, shown: 0 };
    for (const rec of this.records.values()) {
      counts.all += 1;
      if (isProblem(rec.rank)) counts.problems += 1;
      if (rec.row.status === "online") counts.online += 1;
      else counts.offline += 1;
      if (rec.visible) counts.shown += 1;
    }
    this.onCounts(counts);
  }

  _scheduleSort() {
    if (this.sortTimer) return;
    const wait = Math.max(0, this.lastSort + SORT_EVERY_MS - Date.now());
    this.sortTimer = setTimeout(() => {
      this.sortTimer = 0;
      this._sortNow();
    }, wait);
  }

  /** Put rows in rank order, moving only the elements that are out of place. */
  _sortNow() {
    clearTimeout(this.sortTimer);
    this.sortTimer = 0;
    this.lastSort = Date.now();
    this.orderDirty = false;
    const sorted = [...this.records.values()].sort(compare);
    let cursor = this.tbody.firstElementChild;
    for (const rec of sorted) {
      if (rec.tr === cursor) {
        cursor = cursor.nextElementSibling;
      } else {
        this.tbody.insertBefore(rec.tr, cursor);
      }
    }
    this._counts();
  }

  _onClick(ev) {
    const tr = ev.target.closest("tr[data-device-id]");
    if (!tr) return;
    if (ev.target.closest("a")) return; // the link navigates by itself
    this.onOpen(tr.dataset.deviceId);
  }

  _onKey(ev) {
    const tr = ev.target.closest("tr[data-device-id]");
    if (!tr) return;
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      this.onOpen(tr.dataset.deviceId);
    } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      const step = ev.key === "ArrowDown" ? "nextElementSibling" : "previousElementSibling";
      let next = tr[step];
      while (next && next.hidden) next = next[step];
      if (next) next.focus();
    }
  }
}
