// The fleet table, virtualised: every device is a record in a Map, but only the rows on
// screen (plus a margin) are in the DOM, in a small pool of <tr> reused as the page scrolls;
// two spacer rows stand in for the rest. An update writes only to rows on screen, and only
// where a shown string changed; the order is recomputed at most once per second, and only
// when a rank, a sorted value, a filter match or the set of devices changed.

import { now } from "./format.js";
import { paintRow, paintSeen } from "./paint.js";
import { isProblem, rank } from "./rank.js";
import { bindRow, createRow } from "./row.js";
import { choices, comparator, firstDirection, matches, sortValueChanged } from "./sort.js";

const SORT_EVERY_MS = 1000;
const SPARK_POINTS = 30; // a backend whose snapshot does not say (shapes.py SPARK_POINTS)
const OVERSCAN = 8; // rows rendered above and below the screen

function spacer() {
  const tr = document.createElement("tr");
  tr.className = "spacer";
  tr.setAttribute("aria-hidden", "true");
  return tr;
}

export class FleetTable {
  constructor(tbody, { onOpen, onCounts, onChoices = () => {}, onForget = () => {}, thead = null }) {
    Object.assign(this, { tbody, onOpen, onCounts, onChoices, onForget, thead });
    this.records = new Map(); // id -> {id, row, rank, visible}
    this.sparkPoints = SPARK_POINTS;
    this.order = []; // the records that pass the filters, sorted
    this.views = new Map(); // id -> {tr, cells, shown}: rows in the DOM
    this.pool = [];
    this.filters = { status: "all", query: "", group: "", label: "" };
    this.sortKey = "status";
    this.sortDir = "asc";
    this.orderDirty = this.choicesDirty = false;
    this.lastSort = this.sortTimer = this.raf = this.rowH = 0;
    this.top = spacer();
    this.bottom = spacer();
    tbody.replaceChildren(this.top, this.bottom);
    tbody.addEventListener("click", (ev) => this._onClick(ev));
    tbody.addEventListener("keydown", (ev) => this._onKey(ev));
    if (thead) thead.addEventListener("click", (ev) => this._onSortClick(ev));
    const later = () => this._scheduleRender();
    window.addEventListener("scroll", later, { passive: true });
    window.addEventListener("resize", () => { this.rowH = 0; later(); });
    this._showSort();
  }

  get(id) {
    const rec = this.records.get(id);
    return rec ? rec.row : null;
  }

  get size() {
    return this.records.size;
  }

  /** A snapshot: the rows it lists replace everything; `sparkPoints`: how many trend points
   * a row keeps (the snapshot's `spark_points`). */
  replaceAll(rows, sparkPoints = SPARK_POINTS) {
    this.sparkPoints = sparkPoints;
    this.records.clear();
    for (const row of rows) this._upsert(row);
    this.choicesDirty = true;
    this._sortNow();
  }

  /**
   * An update: per device that changed, its full row or the fields that changed
   * (applyChange), and the ids of devices that are gone. Returns the ids of changes to
   * devices this table does not hold (it then lacks part of the state: ask for a snapshot).
   */
  update(changes, removed = []) {
    const unknown = [];
    for (const change of changes) {
      const rec = this.records.get(change.id);
      if (rec) this._upsert(applyChange(rec.row, change, this.sparkPoints));
      else if (isFullRow(change)) this._upsert(change);
      else unknown.push(change.id);
    }
    for (const id of removed) this._drop(id);
    if (this.orderDirty) this._scheduleSort();
    return unknown;
  }

  /** A device is gone (forgotten): off the screen at once. */
  _drop(id) {
    const rec = this.records.get(id);
    if (!rec) return;
    this.records.delete(id);
    const i = this.order.indexOf(rec);
    if (i >= 0) this.order.splice(i, 1);
    const view = this.views.get(id);
    if (view) {
      this.views.delete(id);
      view.tr.remove();
      this.pool.push(view);
    }
    this._scheduleRender();
  }

  /** Change one filter ("status", "query", "group" or "label") and re-show at once. */
  setFilter(name, value) {
    this.filters[name] = name === "query" ? value.trim().toLowerCase() : value;
    for (const rec of this.records.values()) rec.visible = matches(rec, this.filters);
    this._toTop();
    this._sortNow();
  }

  /** Sort by column `key` ("status" = problems first); the same key again flips it. */
  setSort(key, dir = null) {
    if (dir) this.sortDir = dir;
    else this.sortDir = key === this.sortKey ? (this.sortDir === "asc" ? "desc" : "asc") : firstDirection(key);
    this.sortKey = key;
    this._showSort();
    this._toTop();
    this._sortNow();
  }

  /** After the user changed what is listed: show its start if the page is scrolled past it. */
  _toTop() {
    const top = this.tbody.getBoundingClientRect().top;
    const head = this.thead ? this.thead.getBoundingClientRect().height : 0;
    if (top < head) window.scrollBy(0, top - head);
  }

  /** Once a second: relative times, counts, and the filters' choices when they changed. */
  tick() {
    const t = now();
    for (const [id, view] of this.views) paintSeen(view, this.records.get(id).row, t);
    this._counts();
    if (this.choicesDirty) {
      this.choicesDirty = false;
      this.onChoices(choices(Array.from(this.records.values(), (r) => r.row)));
    }
  }

  /** The table was hidden (device view) and is shown again: render for the current scroll. */
  refresh() {
    this._render();
  }

  focusRow(id) {
    const i = this.order.findIndex((rec) => rec.id === id);
    if (i >= 0) this._focusIndex(i);
  }

  // --- records --------------------------------------------------------------------------

  _upsert(row) {
    let rec = this.records.get(row.id);
    const r = rank(row);
    if (!rec) {
      rec = { id: row.id, row, rank: r, visible: false };
      this.records.set(row.id, rec);
      this.orderDirty = this.choicesDirty = true;
    } else {
      if (r !== rec.rank || sortValueChanged(this.sortKey, rec.row, row)) this.orderDirty = true;
      if (!this.choicesDirty && metaKey(rec.row) !== metaKey(row)) this.choicesDirty = true;
      rec.row = row;
      rec.rank = r;
    }
    const visible = matches(rec, this.filters);
    if (visible !== rec.visible) {
      rec.visible = visible;
      this.orderDirty = true;
    }
    const view = this.views.get(row.id);
    if (view) paintRow(view, rec);
  }

  _scheduleSort() {
    if (this.sortTimer) return;
    const wait = Math.max(0, this.lastSort + SORT_EVERY_MS - Date.now());
    this.sortTimer = setTimeout(() => this._sortNow(), wait);
  }

  _sortNow() {
    clearTimeout(this.sortTimer);
    this.sortTimer = 0;
    this.lastSort = Date.now();
    this.orderDirty = false;
    const visible = [];
    for (const rec of this.records.values()) if (rec.visible) visible.push(rec);
    this.order = visible.sort(comparator(this.sortKey, this.sortDir));
    this.tbody.dataset.total = String(this.records.size);
    this.tbody.dataset.shown = String(this.order.length);
    this._render();
    this._counts();
  }

  _counts() {
    const counts = { all: 0, problems: 0, offline: 0, online: 0, shown: this.order.length };
    for (const rec of this.records.values()) {
      counts.all += 1;
      if (isProblem(rec.rank)) counts.problems += 1;
      if (rec.row.status === "online") counts.online += 1;
      else counts.offline += 1;
    }
    this.onCounts(counts);
  }

  // --- the window of rows in the DOM ------------------------------------------------------

  _rowHeight() {
    if (!this.rowH) {
      const css = parseFloat(getComputedStyle(this.tbody).getPropertyValue("--row-h"));
      this.rowH = Number.isFinite(css) && css > 0 ? css : 37;
    }
    return this.rowH;
  }

  _scheduleRender() {
    if (this.raf) return;
    this.raf = requestAnimationFrame(() => {
      this.raf = 0;
      this._render();
    });
  }

  /** Put the rows on screen (and OVERSCAN more each side) between the two spacers. */
  _render() {
    const h = this._rowHeight();
    const n = this.order.length;
    const above = Math.max(0, -this.tbody.getBoundingClientRect().top);
    const first = Math.max(0, Math.min(n, Math.floor(above / h) - OVERSCAN));
    const last = Math.max(first, Math.min(n, Math.ceil((above + window.innerHeight) / h) + OVERSCAN));
    const wanted = new Map();
    for (let i = first; i < last; i += 1) wanted.set(this.order[i].id, this.order[i]);
    for (const [id, view] of this.views) {
      if (!wanted.has(id)) {
        this.views.delete(id);
        view.tr.remove();
        this.pool.push(view);
      }
    }
    let cursor = this.top.nextElementSibling;
    for (const [id, rec] of wanted) {
      let view = this.views.get(id);
      if (!view) {
        view = this.pool.pop() || createRow();
        bindRow(view, id);
        this.views.set(id, view);
        paintRow(view, rec);
      }
      if (view.tr === cursor) cursor = cursor.nextElementSibling;
      else this.tbody.insertBefore(view.tr, cursor);
    }
    this.top.style.height = `${first * h}px`;
    this.bottom.style.height = `${(n - last) * h}px`;
  }

  _focusIndex(i) {
    const h = this._rowHeight();
    const head = this.thead ? this.thead.getBoundingClientRect().height : 0;
    const rowTop = this.tbody.getBoundingClientRect().top + i * h; // relative to the screen
    if (rowTop < head) window.scrollBy(0, rowTop - head);
    else if (rowTop + h > window.innerHeight) window.scrollBy(0, rowTop + h - window.innerHeight);
    this._render();
    const view = this.views.get(this.order[i].id);
    if (view) view.tr.focus({ preventScroll: true });
  }

  // --- events ----------------------------------------------------------------------------

  _showSort() {
    if (!this.thead) return;
    for (const th of this.thead.querySelectorAll("th[data-sort]")) {
      const on = th.dataset.sort === this.sortKey;
      th.setAttribute("aria-sort", on ? (this.sortDir === "asc" ? "ascending" : "descending") : "none");
    }
  }

  _onSortClick(ev) {
    const th = ev.target.closest("th[data-sort]");
    if (th && ev.target.closest("button")) this.setSort(th.dataset.sort);
  }

  _onClick(ev) {
    const tr = ev.target.closest("tr[data-device-id]");
    if (!tr) return;
    if (ev.target.closest("button.forget")) {
      this.onForget(tr.dataset.deviceId);
      return;
    }
    if (ev.target.closest("a")) return; // the link navigates by itself
    this.onOpen(tr.dataset.deviceId);
  }

  _onKey(ev) {
    const tr = ev.target.closest("tr[data-device-id]");
    if (!tr || ev.target.closest("button")) return;
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      this.onOpen(tr.dataset.deviceId);
    } else if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
      ev.preventDefault();
      const i = this.order.findIndex((rec) => rec.id === tr.dataset.deviceId);
      const next = i + (ev.key === "ArrowDown" ? 1 : -1);
      if (i >= 0 && next >= 0 && next < this.order.length) this._focusIndex(next);
    }
  }
}

/** A full row (a device new to the page) rather than a change: it has every field. */
export function isFullRow(change) {
  return "status" in change && "spark" in change;
}

/**
 * The row after `change` (the backend's rows.py row_delta): its fields replace the row's;
 * `spark_add` points are appended to the trend, of which the last `keep` stay. A new object
 * (the table compares the old row with the new one).
 */
export function applyChange(row, change, keep) {
  const next = { ...row, ...change };
  if (change.spark_add) {
    next.spark = (row.spark || []).concat(change.spark_add).slice(-keep);
    delete next.spark_add;
  }
  return next;
}

function metaKey(row) {
  return `${(row.groups || []).join("\u0000")}\u0001${JSON.stringify(row.labels || {})}`;
}
