// Which charts a device gets, from the metric keys it sends: known families grouped the way
// operators read a host (CPU, load, memory, disks, disk I/O, network, temperature, processes,
// system), and one chart per family for anything else (systemd.*, process.*, vitals.*,
// textfile.*, exec.*). Pure: no DOM.

import { bytes, num } from "./format.js";

export const MAX_SERIES = 16; // per chart, by default (the picker can add more)
export const MAX_KEYS = 240; // per history request (the API takes 256)

export function family(key) {
  const i = key.indexOf("[");
  return i < 0 ? key : key.slice(0, i);
}

export function instance(key) {
  const i = key.indexOf("[");
  return i < 0 ? "" : key.slice(i + 1, -1);
}

function days(v) {
  if (typeof v !== "number") return "–";
  if (v < 120) return `${num(v, 0)} s`;
  if (v < 7200) return `${num(v / 60, 0)} min`;
  if (v < 172800) return `${num(v / 3600, 1)} h`;
  return `${num(v / 86400, 1)} d`;
}

export const UNITS = {
  percent: { format: (v) => `${num(v, 1)}%`, max: 100 },
  celsius: { format: (v) => `${num(v, 1)} °C` },
  bytes: { format: (v) => bytes(v) },
  rate: { format: (v) => `${bytes(v)}/s` },
  per_s: { format: (v) => `${num(v, 2)}/s` },
  seconds: { format: days },
  number: { format: (v) => num(v, 2) },
};

// Group -> charts. A chart draws the keys of its families; `split` makes one chart per
// instance (per network interface); `names` labels a family within the chart.
const GROUPS = [
  ["cpu", "CPU", [
    { id: "cpu", title: "CPU", unit: "percent",
      names: { "cpu.percent": "total", "cpu.iowait_percent": "iowait", "cpu.steal_percent": "steal" } },
    { id: "cpu-cores", title: "CPU per core", unit: "percent", names: { "cpu.core_percent": "core {}" } },
  ]],
  ["load", "Load", [
    { id: "load", title: "Load average", unit: "number",
      names: { "load.load1": "1 min", "load.load5": "5 min", "load.load15": "15 min" } },
    { id: "load-per-core", title: "Load per core", unit: "number",
      names: { "load.load1_per_core": "1 min", "load.load5_per_core": "5 min", "load.load15_per_core": "15 min" } },
  ]],
  ["memory", "Memory and swap", [
    { id: "memory", title: "Memory and swap used", unit: "percent",
      names: { "memory.used_percent": "memory", "swap.used_percent": "swap" } },
    { id: "memory-bytes", title: "Memory and swap sizes", unit: "bytes",
      names: { "memory.available_bytes": "available", "memory.total_bytes": "memory total", "swap.total_bytes": "swap total" } },
  ]],
  ["disk", "Disks", [
    { id: "disk", title: "Disk used", unit: "percent", names: { "disk.used_percent": "" } },
    { id: "inodes", title: "Inodes used", unit: "percent", names: { "disk.inodes_used_percent": "" } },
    { id: "disk-free", title: "Disk free and size", unit: "bytes",
      names: { "disk.free_bytes": "free", "disk.total_bytes": "size" } },
  ]],
  ["diskio", "Disk I/O", [
    { id: "diskio-bytes", title: "Disk I/O", unit: "rate",
      names: { "diskio.read_bytes_per_s": "read", "diskio.write_bytes_per_s": "write" } },
    { id: "diskio-ops", title: "Disk operations", unit: "per_s",
      names: { "diskio.read_ops_per_s": "reads", "diskio.write_ops_per_s": "writes" } },
  ]],
  ["net", "Network", [
    { id: "net", title: "Network", unit: "rate", split: true, skip: ["lo"],
      names: { "net.rx_bytes_per_s": "rx", "net.tx_bytes_per_s": "tx" } },
    { id: "net-errors", title: "Network errors and drops", unit: "per_s", skip: ["lo"],
      names: { "net.rx_errors_per_s": "rx errors", "net.tx_errors_per_s": "tx errors",
               "net.rx_drops_per_s": "rx drops", "net.tx_drops_per_s": "tx drops" } },
    { id: "net-packets", title: "Network packets", unit: "per_s", skip: ["lo"],
      names: { "net.rx_packets_per_s": "rx", "net.tx_packets_per_s": "tx" } },
  ]],
  ["temp", "Temperature", [
    { id: "temp", title: "Temperature", unit: "celsius", hottest: true, names: { "temp.celsius": "" } },
  ]],
  ["procs", "Processes", [
    { id: "procs", title: "Processes", unit: "number", names: { "procs.count": "processes" } },
  ]],
  ["system", "Uptime and reboots", [
    { id: "uptime", title: "Uptime", unit: "seconds", names: { "uptime.seconds": "uptime" } },
    { id: "reboots", title: "Reboots", unit: "number",
      names: { "vitals.reboots": "reboots seen", "vitals.rebooted": "rebooted (10 min)" } },
  ]],
];

const OWNER = new Map(); // family -> [group id, chart]
for (const [gid, , charts] of GROUPS) {
  for (const chart of charts) for (const fam of Object.keys(chart.names)) OWNER.set(fam, [gid, chart]);
}

function guessUnit(fam) {
  if (fam.endsWith("_percent")) return "percent";
  if (fam.endsWith("_bytes_per_s")) return "rate";
  if (fam.endsWith("_bytes")) return "bytes";
  if (fam.endsWith("_per_s")) return "per_s";
  if (fam.endsWith("celsius")) return "celsius";
  return "number";
}

function byInstance(a, b) {
  return instance(a).localeCompare(instance(b), undefined, { numeric: true }) || a.localeCompare(b);
}

/**
 * The charts for `known` keys, grouped: [{id, title, charts: [{id, title, unit, keys,
 * names: key -> label, hottest?, skipped: keys not drawn by default}]}]. `latest` (key ->
 * newest value) orders temperature sensors hottest first, so the hottest is never cut off.
 */
export function catalogue(known, latest = {}) {
  const charts = new Map(); // chart id -> chart
  const groups = new Map(); // group id -> {id, title, charts: []}
  const order = GROUPS.map(([id]) => id);
  const add = (gid, gtitle, id, make) => {
    let chart = charts.get(id);
    if (!chart) {
      chart = { id, keys: [], names: {}, skipped: [], ...make() };
      charts.set(id, chart);
      if (!groups.has(gid)) groups.set(gid, { id: gid, title: gtitle, charts: [] });
      groups.get(gid).charts.push(chart);
    }
    return chart;
  };
  for (const key of [...known].sort(byInstance)) {
    const fam = family(key);
    const inst = instance(key);
    const owned = OWNER.get(fam);
    let chart;
    let label;
    if (owned) {
      const [gid, def] = owned;
      const gtitle = GROUPS.find(([g]) => g === gid)[1];
      const id = def.split ? `${def.id}:${inst}` : def.id;
      chart = add(gid, gtitle, id, () => ({
        rank: GROUPS.find(([g]) => g === gid)[2].indexOf(def),
        title: def.split && inst ? `${def.title} ${inst}` : def.title, unit: def.unit,
        hottest: Boolean(def.hottest), order: Object.keys(def.names),
      }));
      const name = def.names[fam];
      if (name.includes("{}")) label = name.replace("{}", inst);
      else label = [def.split ? "" : inst, name].filter(Boolean).join(" ") || def.title;
      if (def.skip && def.skip.includes(inst)) chart.skipped.push(key);
    } else {
      const gid = fam.split(".")[0];
      if (!order.includes(gid)) order.push(gid);
      chart = add(gid, gid, `f:${fam}`, () => ({ rank: 1000, title: fam, unit: guessUnit(fam), hottest: false }));
      label = inst || fam;
    }
    chart.keys.push(key);
    chart.names[key] = label;
  }
  for (const chart of charts.values()) {
    if (chart.hottest) chart.keys.sort((a, b) => (latest[b] ?? -Infinity) - (latest[a] ?? -Infinity));
    else if (chart.order) chart.keys.sort((a, b) => chart.order.indexOf(family(a)) - chart.order.indexOf(family(b)) || byInstance(a, b));
  }
  const groupList = order.filter((g) => groups.has(g)).map((g) => groups.get(g));
  for (const g of groupList) g.charts.sort((a, b) => a.rank - b.rank || a.id.localeCompare(b.id, undefined, { numeric: true }));
  return groupList;
}

/** The keys drawn when the user picked nothing: every chart's, capped per chart and in all. */
export function defaultKeys(groups) {
  const out = [];
  for (const g of groups) {
    for (const c of g.charts) {
      const keys = c.keys.filter((k) => !c.skipped.includes(k)).slice(0, MAX_SERIES);
      out.push(...keys);
    }
  }
  return out.slice(0, MAX_KEYS);
}

/** The hottest of the `temp.celsius` keys by their newest value, or null. */
export function hottestKey(known, latest = {}) {
  let best = null;
  for (const k of known) {
    if (family(k) !== "temp.celsius" || typeof latest[k] !== "number") continue;
    if (best === null || latest[k] > latest[best]) best = k;
  }
  return best;
}
