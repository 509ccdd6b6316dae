// Wiring: the WebSocket feeds the table, the alert feed and the figures; the hash picks the
// view (#/ or #/device/<id>); a one-second tick keeps relative times fresh.

import * as api from "./api.js";
import * as auth from "./auth.js";
import { ForgetDialog } from "./admin.js";
import { AlertFeed } from "./alerts.js";
import { DeviceView } from "./device.js";
import { FeedState } from "./feed.js";
import { Silences } from "./silences.js";
import { syncClock } from "./format.js";
import { Insights } from "./insights.js";
import { ConnState, renderHealth, renderSummary } from "./summary.js";
import { FleetTable } from "./table.js";
import { ReconnectingSocket } from "./ws.js";

const $ = (id) => document.querySelector(`[data-testid=${id}]`);
const fleetView = $("fleet-view");
const summaryRoot = document.querySelector(".summary");
const healthRoot = $("health-strip");
const emptyState = $("empty-state");

function showCounts(counts) {
  for (const b of document.querySelectorAll("[data-filter]")) {
    const n = b.querySelector(".n");
    const text = String(counts[b.dataset.filter]);
    if (n.textContent !== text) n.textContent = text;
  }
  let text = "";
  if (counts.all === 0) text = "Waiting for devices…";
  else if (counts.shown === 0) text = "No device matches.";
  if (emptyState.textContent !== text) emptyState.textContent = text;
  emptyState.hidden = !text;
}

/** Replace a <select>'s choices (keeping "All" and the current choice when still offered). */
function showChoices(select, values, filterName) {
  const current = select.value;
  const options = [select.options[0]];
  for (const v of values) {
    const o = document.createElement("option");
    o.value = v;
    o.textContent = v;
    options.push(o);
  }
  select.replaceChildren(...options);
  select.value = values.includes(current) ? current : "";
  if (select.value !== current) table.setFilter(filterName, select.value);
  select.closest("label").hidden = values.length === 0 && !current;
}

const table = new FleetTable($("device-rows"), {
  onOpen: (id) => {
    location.hash = `#/device/${encodeURIComponent(id)}`;
  },
  onCounts: showCounts,
  onChoices: ({ groups, labels }) => {
    showChoices($("group-filter"), groups, "group");
    showChoices($("label-filter"), labels, "label");
  },
  onForget: (id) => forgetDialog.ask(id),
  thead: $("fleet-head"),
});
const insights = new Insights($("insights"));
const forgetDialog = new ForgetDialog($("forget-dialog"), {
  onForgotten: (id) => table.update([], [id]),
});
const silences = new Silences($("silences"), $("silence-dialog"), {
  onChange: async () => { // who is muted changed: the firing list shows it
    try {
      feed.replace(await api.alerts());
    } catch {
      // the WebSocket's reconnect handles a backend that is gone
    }
  },
});
const feed = new AlertFeed($("alert-feed"), {
  onChange: () => device.visible && device.refreshAlerts(),
  decorate: (li, alert) => li.append(silences.button(alert)),
});
const device = new DeviceView($("device-view"), {
  getRow: (id) => table.get(id),
  firingFor: (id) => feed.firingFor(id),
  pendingFor: (id) => feed.pendingFor(id),
  onAuth: () => reauth(),
});
const conn = new ConnState($("conn-state"), { onRetry: () => socket.reconnectNow() });
const feedState = new FeedState($("feed-state"), $("feed-banner"), fleetView);

// --- access token -----------------------------------------------------------------------------

let authKnown = false;

async function prepare() {
  if (!authKnown) {
    auth.setRequired(await api.authRequired());
    authKnown = true;
  }
  if (auth.isRequired() && !auth.current()) {
    conn.set("disconnected", { reason: "auth" });
    await auth.ask();
    conn.set("connecting");
  }
}

/** The token was refused (REST 401, WebSocket close 4401/1008): ask for another one. */
async function reauth() {
  const hadToken = Boolean(auth.current());
  auth.forget();
  try {
    auth.setRequired(await api.authRequired());
  } catch {
    // keep what we knew
  }
  if (!auth.isRequired()) {
    await new Promise((resolve) => setTimeout(resolve, 2000)); // refused without a token? wait
    return;
  }
  await auth.ask(hadToken ? "That token was not accepted. Please enter it again." : "");
}

/**
 * After a failed handshake (which a browser reports as a bare 1006): false when the backend
 * refuses our token. Only asked when a token is in use, so a backend that is merely down
 * costs no extra requests.
 */
async function probeAuth() {
  if (!auth.isRequired()) return true;
  return auth.current() ? api.tokenAccepted() : false;
}

// --- live data --------------------------------------------------------------------------------

// Pending alerts come with the snapshot. A backend whose update frames do not carry the
// `pending` list (new ones, or ones that cleared) is asked for it every PENDING_POLL_MS.
const PENDING_POLL_MS = 15000;
let pendingInFrames = false;
let pendingTimer = 0;

function pollPending(supported) {
  clearTimeout(pendingTimer);
  if (!supported || pendingInFrames) return;
  pendingTimer = setTimeout(async () => {
    try {
      if (!document.hidden) feed.setPending((await api.alerts()).pending);
    } catch {
      // the WebSocket's own reconnect handles a backend that is gone
    }
    pollPending(true);
  }, PENDING_POLL_MS);
}

function onFrame(msg) {
  if (msg.summary) {
    syncClock(msg.summary.now);
    renderSummary(summaryRoot, msg.summary);
    renderHealth(healthRoot, msg.summary.backend);
    feedState.set(msg.summary.feed);
  }
  if (msg.type === "snapshot") {
    table.replaceAll(msg.devices || [], msg.spark_points);
    feed.replace(msg.alerts || {});
    pollPending(Array.isArray((msg.alerts || {}).pending));
  } else if (msg.type === "update") {
    const unknown = table.update(msg.devices || [], msg.removed || []);
    if (unknown.length) { // changes to rows this page lacks: start again from a snapshot
      console.warn(`update for ${unknown.length} unknown device(s), e.g. ${unknown[0]}: resyncing`);
      socket.resync();
    }
    feed.add(msg.alerts || []);
    if (Array.isArray(msg.pending)) {
      pendingInFrames = true; // the full list, when the backend sends it
      clearTimeout(pendingTimer);
      feed.setPending(msg.pending);
    }
  } else {
    return;
  }
  if (device.visible && (msg.type === "snapshot" || (msg.devices || []).some((r) => r.id === device.id))) {
    device.updateRow(table.get(device.id));
  }
}

const socket = new ReconnectingSocket({
  url: api.wsUrl,
  prepare,
  onFrame,
  onState: (state, detail) => {
    conn.set(state, detail);
    feedState.page(state === "connected");
  },
  onAuthFailure: reauth,
  probeAuth,
});

// --- views ------------------------------------------------------------------------------------

function route() {
  // #/device/<id>[?range=..|from=..&to=..&keys=..]: the query is the device view's (timerange.js)
  const m = location.hash.match(/^#\/device\/([^?]+)(?:\?(.*))?$/);
  let id = null;
  if (m) {
    try {
      id = decodeURIComponent(m[1]);
    } catch {
      id = null;
    }
  }
  if (id) {
    const opened = id !== device.id;
    fleetView.hidden = true;
    device.show(id, m[2] || "");
    if (opened) {
      $("device-title").focus({ preventScroll: true });
      window.scrollTo(0, 0);
    }
  } else {
    const previous = device.id;
    device.hide();
    fleetView.hidden = false;
    table.refresh();
    if (previous) table.focusRow(previous);
  }
}

for (const b of document.querySelectorAll("[data-filter]")) {
  b.addEventListener("click", () => {
    for (const other of document.querySelectorAll("[data-filter]")) {
      other.setAttribute("aria-pressed", String(other === b));
    }
    table.setFilter("status", b.dataset.filter);
  });
}
$("search").addEventListener("input", (ev) => table.setFilter("query", ev.target.value));
$("group-filter").addEventListener("change", (ev) => table.setFilter("group", ev.target.value));
$("label-filter").addEventListener("change", (ev) => table.setFilter("label", ev.target.value));
window.addEventListener("hashchange", route);

setInterval(() => {
  table.tick();
  if (!fleetView.hidden) insights.refresh(Array.from(table.records.values(), (rec) => rec.row));
  feed.tick();
  conn.tick();
  if (device.visible) device.tick();
}, 1000);

route();
socket.start();
silences.refresh();
