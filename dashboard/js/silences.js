// Silences on the page: the list (active and pending, each with Expire), a form in a dialog
// that previews what a silence would hide now before creating it, and a Silence button on
// every firing alert (docs/api.md, "Silences").

import * as auth from "./auth.js";
import { ago, localTime } from "./format.js";

const POLL_MS = 10000; // silences start and end on their own: look again now and then
const CONFIRM = "Tick the confirmation: this silence covers a large share of the fleet.";

async function call(method, path, body) {
  const resp = await fetch(new URL(path, document.baseURI), {
    method,
    headers: { Accept: "application/json", "Content-Type": "application/json", ...auth.headers() },
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let doc = null;
  try {
    doc = await resp.json();
  } catch {
    doc = null;
  }
  if (!resp.ok && resp.status !== 409) throw new Error((doc && doc.error) || `HTTP ${resp.status}`);
  return { status: resp.status, doc };
}

/** "device=pi-1 rule=cpu site=a": a silence's matchers on one line. */
export function matcherText(matchers) {
  const parts = [];
  for (const name of ["device", "group", "rule", "severity"]) {
    if (matchers[name]) parts.push(`${name}=${matchers[name]}`);
  }
  for (const [k, v] of Object.entries(matchers.labels || {})) parts.push(`${k}=${v}`);
  return parts.join(" ");
}

/** "site=a, room=2" -> {site: "a", room: "2"}; throws Error(one line) on a bad pair. */
export function parseLabels(text) {
  const labels = {};
  for (const part of text.split(",").map((p) => p.trim()).filter(Boolean)) {
    const at = part.indexOf("=");
    if (at < 1) throw new Error(`label "${part}": expected key=value`);
    labels[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  return labels;
}

/** "Hides 2 firing and 1 pending alerts now; covers 3 of 40 devices." */
export function previewText(p) {
  return `Hides ${p.firing.length} firing and ${p.pending.length} pending alerts now; ` +
    `covers ${p.devices} of ${p.fleet} devices.`;
}

export class Silences {
  constructor(section, dialog, { onChange }) {
    this.list = section.querySelector("[data-testid=silence-list]");
    this.none = section.querySelector("[data-testid=silence-none]");
    this.dialog = dialog;
    this.form = dialog.querySelector("form");
    this.preview = dialog.querySelector("[data-testid=silence-preview]");
    this.matched = dialog.querySelector("[data-testid=silence-matched]");
    this.confirmRow = dialog.querySelector("[data-testid=silence-confirm-row]");
    this.confirm = dialog.querySelector("[data-testid=silence-confirm]");
    this.confirmText = dialog.querySelector("[data-testid=silence-confirm-text]");
    this.error = dialog.querySelector("[data-testid=silence-error]");
    this.onChange = onChange;
    section.querySelector("[data-testid=silence-new]").addEventListener("click", () => this.open({}));
    dialog.querySelector("[data-testid=silence-cancel]").addEventListener("click", () => dialog.close());
    dialog.querySelector("[data-testid=silence-preview-button]")
      .addEventListener("click", () => this._preview());
    this.form.addEventListener("submit", (ev) => this._submit(ev));
    this.form.addEventListener("input", (ev) => {
      if (ev.target !== this.confirm) this._stale();
    });
    this.timer = 0;
  }

  /** The Silence button of a firing alert. */
  button(alert) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "silence-button";
    b.dataset.testid = "alert-silence";
    b.textContent = "Silence";
    b.title = `Silence ${alert.rule} on ${alert.device}`;
    b.addEventListener("click", (ev) => {
      ev.preventDefault();
      this.open({ device: alert.device, rule: alert.rule });
    });
    return b;
  }

  /** Open the form, pre-filled with `fields` (device, rule, ...). */
  open(fields) {
    this.form.reset();
    for (const [name, value] of Object.entries(fields)) {
      if (this.form.elements[name]) this.form.elements[name].value = value;
    }
    this.form.elements.author.value = localStorage.getItem("edgefleet.author") || "";
    this._stale();
    this.dialog.showModal();
  }

  /** Fetch and show the list; again every POLL_MS. */
  async refresh() {
    clearTimeout(this.timer);
    try {
      const { doc } = await call("GET", "api/silences");
      this._render(doc.silences.filter((s) => s.state !== "expired"));
    } catch {
      // the WebSocket's reconnect shows a backend that is gone
    }
    this.timer = setTimeout(() => this.refresh(), POLL_MS);
  }

  _render(silences) {
    const frag = document.createDocumentFragment();
    for (const s of silences) frag.append(this._item(s));
    this.list.replaceChildren(frag);
    this.none.hidden = silences.length > 0;
  }

  _item(s) {
    const li = document.createElement("li");
    li.className = `silence state-${s.state}`;
    li.dataset.testid = "silence-item";
    li.dataset.id = s.id;
    const what = document.createElement("span");
    what.className = "what";
    what.dataset.testid = "silence-matchers";
    what.textContent = matcherText(s.matchers);
    const who = document.createElement("span");
    who.className = "who";
    const until = s.state === "pending" ? `from ${localTime(s.starts_at)}` : `ends ${localTime(s.ends_at)}`;
    who.textContent = `${s.author}${s.comment ? `: ${s.comment}` : ""} · ${until} · made ${ago(s.created_at)}`;
    const expire = document.createElement("button");
    expire.type = "button";
    expire.dataset.testid = "silence-expire";
    expire.textContent = "Expire";
    expire.addEventListener("click", async () => {
      expire.disabled = true;
      try {
        await call("DELETE", `api/silences/${encodeURIComponent(s.id)}`);
      } catch (err) {
        who.textContent = `Not expired: ${err.message}`;
      }
      await this.refresh();
      this.onChange();
    });
    li.append(what, who, expire);
    return li;
  }

  _body() {
    const f = this.form.elements;
    const matchers = {};
    for (const name of ["device", "group", "rule", "severity"]) {
      if (f[name].value.trim()) matchers[name] = f[name].value.trim();
    }
    const labels = parseLabels(f.labels.value);
    if (Object.keys(labels).length) matchers.labels = labels;
    return { matchers, duration: f.duration.value.trim(), author: f.author.value.trim(),
      comment: f.comment.value.trim() };
  }

  _stale() {
    this.shown = null;
    this.preview.textContent = "Preview to see what it would hide now.";
    this.matched.replaceChildren();
    this.confirmRow.hidden = true;
    this.confirm.checked = false;
    this.error.hidden = true;
  }

  _fail(message) {
    this.error.textContent = message;
    this.error.hidden = false;
  }

  async _preview() {
    let body;
    try {
      body = this._body();
      const { doc } = await call("POST", "api/silences/preview", body);
      this._showPreview(doc);
    } catch (err) {
      this._fail(err.message);
    }
  }

  _showPreview(p) {
    this.shown = p;
    this.error.hidden = true;
    this.preview.textContent = previewText(p);
    const frag = document.createDocumentFragment();
    for (const a of [...p.firing, ...p.pending]) {
      const li = document.createElement("li");
      li.dataset.testid = "silence-match";
      li.textContent = `${a.kind === "firing" ? "firing" : "pending"}: ${a.summary || a.rule}`;
      frag.append(li);
    }
    this.matched.replaceChildren(frag);
    this.confirmRow.hidden = !p.needs_confirm;
    this.confirmText.textContent =
      `Yes: it covers ${Math.round(p.share * 100)} % of the fleet (more than ${Math.round(p.confirm_share * 100)} %)`;
  }

  async _submit(ev) {
    ev.preventDefault();
    if (!this.shown) return this._preview(); // always show what it hides first
    if (this.shown.needs_confirm && !this.confirm.checked) return this._fail(CONFIRM);
    try {
      const body = { ...this._body(), confirm: this.confirm.checked };
      const { status, doc } = await call("POST", "api/silences", body);
      if (status === 409) {
        this._showPreview(doc.preview);
        return this._fail(CONFIRM);
      }
      localStorage.setItem("edgefleet.author", body.author);
    } catch (err) {
      return this._fail(err.message);
    }
    this.dialog.close();
    await this.refresh();
    this.onChange();
  }
}
