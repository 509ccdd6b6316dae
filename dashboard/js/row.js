// One row of the fleet table: built once as a prototype, then deep-cloned for the pool of
// rows the virtualised table shows (bindRow puts a device into a pooled row).

import { sparkline } from "./chart.js";

const COLUMNS = [
  ["c-status", "Status"],
  ["c-id", "Device"],
  ["c-seen", "Last seen"],
  ["c-cpu num", "CPU"],
  ["c-mem num", "Memory"],
  ["c-disk num", "Disk"],
  ["c-temp num", "Temp"],
  ["c-spark", "CPU trend"],
  ["c-alert", "Alerts"],
  ["c-act", ""],
];

function meterCell(td) {
  const val = document.createElement("span");
  val.className = "val";
  const meter = document.createElement("span");
  meter.className = "meter";
  meter.setAttribute("aria-hidden", "true");
  const fill = document.createElement("span");
  fill.className = "fill";
  meter.append(fill);
  td.append(val, meter);
}

const TEST_IDS = { 3: "cpu", 4: "memory", 5: "disk", 6: "temp", 8: "alerts" }; // by column

/** One empty row, built once; every pooled row is a deep clone of it. */
function prototypeRow() {
  const tr = document.createElement("tr");
  tr.tabIndex = 0;
  tr.setAttribute("role", "row"); // explicit: the CSS lays rows out as grids
  tr.dataset.testid = "device-row";
  COLUMNS.forEach(([cls, label], i) => {
    const td = document.createElement(i === 1 ? "th" : "td");
    if (i === 1) td.scope = "row";
    td.setAttribute("role", i === 1 ? "rowheader" : "cell");
    td.className = cls;
    td.dataset.label = label;
    if (TEST_IDS[i]) td.dataset.testid = TEST_IDS[i];
    tr.append(td);
  });
  const [status, idCell, seen, cpu, mem, disk, , spark, alert, act] = tr.children;
  const badge = document.createElement("span");
  badge.className = "badge";
  status.append(badge);
  const link = document.createElement("a");
  link.tabIndex = -1; // the row itself is the tab stop
  const flag = document.createElement("span");
  flag.className = "flag";
  flag.dataset.testid = "identity-conflict";
  flag.textContent = "identity conflict";
  flag.hidden = true;
  const chips = document.createElement("span");
  chips.className = "chips";
  chips.dataset.testid = "device-labels";
  idCell.append(link, chips, flag);
  const time = document.createElement("time");
  time.dataset.testid = "last-seen";
  seen.append(time);
  meterCell(cpu);
  meterCell(mem);
  meterCell(disk);
  spark.append(sparkline());
  const sev = document.createElement("span");
  sev.className = "sev";
  alert.append(sev);
  const forget = document.createElement("button");
  forget.type = "button";
  forget.className = "forget";
  forget.dataset.testid = "forget-device";
  forget.textContent = "Forget…";
  act.append(forget);
  return tr;
}

let proto = null;

/** A row with no device yet, and direct references to the cells that updates write to. */
export function createRow() {
  proto = proto || prototypeRow();
  const tr = proto.cloneNode(true);
  const [status, idCell, seen, cpu, mem, disk, temp, spark, alert, act] = tr.children;
  const meter = (td) => ({ val: td.firstChild, fill: td.lastChild.firstChild });
  return {
    tr,
    cells: {
      badge: status.firstChild, time: seen.firstChild, temp, sev: alert.firstChild,
      link: idCell.firstChild, chips: idCell.children[1], flag: idCell.lastChild,
      cpu: meter(cpu), mem: meter(mem), disk: meter(disk),
      spark: spark.firstChild.firstChild, forget: act.firstChild,
    },
  };
}

/** Show device `id` in a pooled row (a row is reused for another device as the page scrolls). */
export function bindRow(view, id) {
  view.tr.dataset.deviceId = id;
  view.cells.link.href = `#/device/${encodeURIComponent(id)}`;
  view.cells.link.textContent = id;
  view.cells.forget.setAttribute("aria-label", `Forget ${id}`);
  view.shown = {};
}
