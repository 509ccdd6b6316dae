// The access token: kept in sessionStorage, asked for with a small modal form.

const KEY = "edgefleet.token";

let required = false;
let pending = null; // the promise of the form currently shown
let memory = ""; // the token when sessionStorage is unavailable

export function setRequired(value) {
  required = Boolean(value);
}

export function isRequired() {
  return required;
}

export function token() {
  try {
    return sessionStorage.getItem(KEY) || "";
  } catch {
    return ""; // storage disabled: the user is asked again after a reload
  }
}

function store(value) {
  try {
    sessionStorage.setItem(KEY, value);
  } catch {
    // ignore: the token still works for this page
  }
  memory = value;
}

/** The token to send: the stored one, or the one typed in when storage is unavailable. */
export function current() {
  return token() || memory;
}

/** Forget the token (it was refused). */
export function forget() {
  memory = "";
  try {
    sessionStorage.removeItem(KEY);
  } catch {
    // ignore
  }
}

/** REST headers carrying the token, if any. */
export function headers() {
  const t = current();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

/**
 * Show the token form and resolve with the token once entered. Concurrent callers share one
 * form. `message` explains why (e.g. the previous token was refused).
 */
export function ask(message = "") {
  const dialog = document.querySelector("[data-testid=token-dialog]");
  const form = dialog.querySelector("form");
  const input = form.querySelector("input");
  const error = form.querySelector("[data-testid=token-error]");
  if (message || !pending) {
    error.textContent = message;
    error.hidden = !message;
  }
  if (pending) return pending;
  input.value = "";
  pending = new Promise((resolve) => {
    const onCancel = (ev) => ev.preventDefault(); // Escape must not dismiss it
    const onSubmit = (ev) => {
      ev.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      store(value);
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("cancel", onCancel);
      dialog.close();
      pending = null;
      resolve(value);
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("cancel", onCancel);
  });
  if (!dialog.open) dialog.showModal();
  input.focus();
  return pending;
}
