// Forgetting a device from the page: a confirmation dialog, then
// `DELETE /api/devices/<id>?purge=history|keep` (docs/api.md).

import * as auth from "./auth.js";

/** `DELETE /api/devices/<id>`; resolves with the answer, throws Error(one line) on refusal. */
export async function forgetDevice(id, purge) {
  const url = new URL(`api/devices/${encodeURIComponent(id)}?purge=${purge ? "history" : "keep"}`,
    document.baseURI);
  const resp = await fetch(url, {
    method: "DELETE", headers: { Accept: "application/json", ...auth.headers() }, cache: "no-store",
  });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (!resp.ok) throw new Error((body && body.error) || `HTTP ${resp.status}`);
  return body;
}

/** The dialog: ask(id) opens it; the device is forgotten only on "Forget". */
export class ForgetDialog {
  constructor(dialog, { onForgotten }) {
    this.dialog = dialog;
    this.onForgotten = onForgotten;
    this.id = null;
    this.name = dialog.querySelector("[data-testid=forget-name]");
    this.purge = dialog.querySelector("[data-testid=forget-purge]");
    this.error = dialog.querySelector("[data-testid=forget-error]");
    dialog.querySelector("[data-testid=forget-cancel]").addEventListener("click", () => dialog.close());
    dialog.querySelector("form").addEventListener("submit", (ev) => this._submit(ev));
  }

  ask(id) {
    this.id = id;
    this.name.textContent = id;
    this.purge.checked = false;
    this.error.hidden = true;
    this.dialog.showModal();
  }

  async _submit(ev) {
    ev.preventDefault();
    const id = this.id;
    try {
      await forgetDevice(id, this.purge.checked);
    } catch (err) {
      this.error.textContent = `Not forgotten: ${err.message}`;
      this.error.hidden = false;
      return;
    }
    this.dialog.close();
    this.onForgotten(id);
  }
}
