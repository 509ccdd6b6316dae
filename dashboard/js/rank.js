// Problem ranking, sorting and filtering of device rows (pure functions). The order matches
// the backend's (problem_rank in backend/web/shapes.py), so a snapshot arrives already in the
// page's order.

// Lower rank sorts first. Ranks up to `high` are "problems".
export const RANK = Object.freeze({
  critical: 0,
  offline: 1,
  alerting: 2, // any other firing alert (warning, info)
  high: 3,
  ok: 4,
});

const HIGH = { cpu: 85, memory: 85, disk: 85, temp: 80 };

/** True when any usage figure is at or above its "high" level. */
export function highUsage(row) {
  return Object.entries(HIGH).some(([k, limit]) => typeof row[k] === "number" && row[k] >= limit);
}

/** The row's problem rank: critical alert, offline, other alert, high usage, ok. */
export function rank(row) {
  if (row.severity === "critical") return RANK.critical;
  if (row.status !== "online") return RANK.offline;
  if (row.severity) return RANK.alerting;
  if (highUsage(row)) return RANK.high;
  return RANK.ok;
}

export function isProblem(r) {
  return r <= RANK.high;
}

/** Sort order: problems first, then by device id. Items are {id, rank}. */
export function compare(a, b) {
  if (a.rank !== b.rank) return a.rank - b.rank;
  if (a.id < b.id) return -1;
  return a.id > b.id ? 1 : 0;
}

/** Does a row with this status and rank pass the filter ("all", "problems", ...)? */
export function passesFilter(filter, status, r) {
  switch (filter) {
    case "problems":
      return isProblem(r);
    case "offline":
      return status !== "online";
    case "online":
      return status === "online";
    default:
      return true;
  }
}
