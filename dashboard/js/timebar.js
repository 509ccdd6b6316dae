// The device view's time controls: presets, ◀ − + ▶, the custom range form, and the line
// that says which range and resolution the charts show.

import { localTime, now } from "./format.js";
import * as tr from "./timerange.js";

function localInput(ts) {
  const d = new Date(ts * 1000 - new Date(ts * 1000).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
}

export class TimeBar {
  /** handlers: {onRange(range, push), onNav(action), onError(text)} */
  constructor(root, { onRange, onNav, onError }) {
    this.root = root;
    this.$ = (id) => root.querySelector(`[data-testid=${id}]`);
    for (const b of root.querySelectorAll("[data-range]")) {
      b.addEventListener("click", () => {
        const p = b.dataset.range;
        onRange(p === "fit" ? tr.FIT : { kind: "preset", preset: p }, true);
      });
    }
    for (const b of root.querySelectorAll("[data-nav]")) {
      b.addEventListener("click", () => onNav(b.dataset.nav));
    }
    this.$("custom-range").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const from = Date.parse(this.$("custom-from").value) / 1000;
      const to = Date.parse(this.$("custom-to").value) / 1000;
      if (!(from < to)) {
        onError("The custom range needs From before To.");
        return;
      }
      onRange(tr.fixed(from, to, Math.max(now(), to)), true);
    });
  }

  /** Show `range` as drawn: `request` {from, to, live}, `history` as the API answered it. */
  show(range, request, history) {
    for (const b of this.root.querySelectorAll("[data-range]")) {
      const on = range.kind === "fit" ? b.dataset.range === "fit"
        : range.kind === "preset" && b.dataset.range === range.preset;
      b.setAttribute("aria-pressed", String(on));
    }
    this.$("range-text").textContent = tr.rangeText(range, request, localTime);
    const res = this.$("resolution");
    res.textContent = `Resolution: ${tr.resolutionText(history)}`;
    res.dataset.resolution = history.resolution || "raw";
    const from = this.$("custom-from");
    const to = this.$("custom-to");
    if (document.activeElement !== from) from.value = localInput(request.from);
    if (document.activeElement !== to) to.value = localInput(request.to);
  }
}
