// The device view's facts: live figures from the device's row (WebSocket or REST).

import { bytes, celsius, num, pct } from "./format.js";

export const FACTS = [
  ["CPU", (r) => pct(r.cpu)],
  ["Memory", (r) => pct(r.memory)],
  ["Disk (fullest)", (r) => pct(r.disk)],
  ["Temperature (hottest)", (r) => celsius(r.temp)],
  ["Load (1 min)", (r) => num(r.load1, 2)],
  ["Interval", (r) => (typeof r.interval_s === "number" ? `${num(r.interval_s, 1)} s` : "–")],
  ["Firing alerts", (r) => num(r.firing)],
  ["Lost samples", (r) => num(r.lost)],
  ["Agent version", (r) => (r.agent && r.agent.agent_version) || "–"],
  ["Agent queue", (r) => (r.agent ? num(r.agent.queue_depth) : "–")],
  ["Agent dropped", (r) => (r.agent ? num(r.agent.dropped_total) : "–")],
  ["Sent, not committed", (r) => (r.agent && r.agent.uncommitted != null ? num(r.agent.uncommitted) : "–")],
  ["Agent memory", (r) => (r.agent && r.agent.rss_bytes ? bytes(r.agent.rss_bytes) : "–")],
];

/** One <div><dt><dd> per fact in `dl`; returns the <dd> elements in FACTS order. */
export function buildFacts(dl) {
  return FACTS.map(([label]) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = "–";
    div.append(dt, dd);
    dl.append(div);
    return dd;
  });
}
