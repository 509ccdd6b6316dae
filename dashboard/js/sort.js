// Column sorting and the group/label filters of the fleet table (pure functions).
// Items are the table's records: {id, rank, row}. The default order is problems first
// (rank.js); any other column sorts by its value, devices without a value last, ties by id.

import { compare as problemsFirst, passesFilter } from "./rank.js";

const SEVERITY = { critical: 3, warning: 2, info: 1 };

/** Sortable columns: key -> how to read the value from a row (null: no value). */
export const SORT_COLUMNS = Object.freeze({
  status: null, // problems first (the default)
  id: (row) => row.id,
  seen: (row) => (typeof row.last_seen === "number" ? row.last_seen : null),
  cpu: (row) => num(row.cpu),
  memory: (row) => num(row.memory),
  disk: (row) => num(row.disk),
  temp: (row) => num(row.temp),
  alerts: (row) => (row.severity ? SEVERITY[row.severity] * 1000 + (row.firing || 0) : null),
});

/** The direction a column sorts in when first clicked: figures biggest first. */
export function firstDirection(key) {
  return key === "id" || key === "status" ? "asc" : "desc";
}

function num(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function byId(a, b) {
  if (a.id < b.id) return -1;
  return a.id > b.id ? 1 : 0;
}

/** A comparator of records for column `key` ("status" = problems first) and "asc"/"desc". */
export function comparator(key, dir = "asc") {
  const read = SORT_COLUMNS[key];
  if (!read) return dir === "desc" ? (a, b) => problemsFirst(b, a) : problemsFirst;
  const sign = dir === "desc" ? -1 : 1;
  return (a, b) => {
    const va = read(a.row);
    const vb = read(b.row);
    if (va === null || vb === null) {
      if (va === vb) return byId(a, b);
      return va === null ? 1 : -1; // no value: last, whichever the direction
    }
    if (va !== vb) return (va < vb ? -1 : 1) * sign;
    return byId(a, b);
  };
}

/** Does a column's value in `row` differ from `old` (so the order may change)? */
export function sortValueChanged(key, old, row) {
  const read = SORT_COLUMNS[key];
  return Boolean(read) && (!old || read(old) !== read(row));
}

/**
 * Filters: {status: "all"|"problems"|"offline"|"online", query, group: "" | name,
 * label: "" | "key=value"}. Pure: does record `rec` pass them all?
 */
export function matches(rec, f) {
  const row = rec.row;
  if (!passesFilter(f.status, row.status, rec.rank)) return false;
  if (f.query && !rec.id.toLowerCase().includes(f.query)) return false;
  if (f.group && !(Array.isArray(row.groups) && row.groups.includes(f.group))) return false;
  if (f.label) {
    const at = f.label.indexOf("=");
    const labels = row.labels || {};
    if (labels[f.label.slice(0, at)] !== f.label.slice(at + 1)) return false;
  }
  return true;
}

/** Every group and every "key=value" label the rows carry, sorted (the filters' choices). */
export function choices(rows) {
  const groups = new Set();
  const labels = new Set();
  for (const row of rows) {
    if (Array.isArray(row.groups)) for (const g of row.groups) groups.add(g);
    if (row.labels) for (const [k, v] of Object.entries(row.labels)) labels.add(`${k}=${v}`);
  }
  return { groups: [...groups].sort(), labels: [...labels].sort() };
}
