// The backend's FEED state (is the backend hearing the fleet?), shown apart from the page's
// own WebSocket state: while the feed is lost, device states are unknown, not offline.

import { clockTime } from "./format.js";

/**
 * What to show for `summary.feed` ({state, connected, since, detail}, docs/api.md).
 * `pageConnected`: false while the page's own WebSocket is down (then nothing is known).
 * Returns {state, text, banner}: state "ok" | "lost" | "starting" | "unknown"; banner "" or
 * the sentence shown above the devices.
 */
export function feedView(feed, pageConnected = true) {
  if (!pageConnected) return { state: "unknown", text: "Feed: unknown (page not connected)", banner: "" };
  if (!feed || typeof feed !== "object") return { state: "unknown", text: "", banner: "" };
  const detail = typeof feed.detail === "string" && feed.detail ? feed.detail : "";
  if (feed.state === "ok") return { state: "ok", text: "Feed: receiving", banner: "" };
  if (feed.state === "starting") return { state: "starting", text: "Feed: starting…", banner: "" };
  const at = clockTime(feed.since);
  const since = at ? ` since ${at}` : "";
  return {
    state: "lost",
    text: `Feed lost${since} — device states are unknown, not offline`,
    banner:
      `The backend is not receiving from the fleet${since}${detail ? ` (${detail})` : ""}. ` +
      "Devices are shown as last known: their state is unknown, not offline.",
  };
}

/** The header's feed indicator and the banner over the device list. */
export class FeedState {
  constructor(root, banner, fleet) {
    this.root = root;
    this.text = root.querySelector(".feed-text");
    this.banner = banner;
    this.fleet = fleet;
    this.feed = null;
    this.pageConnected = false;
  }

  /** A new `summary.feed` from a frame (undefined from an older backend). */
  set(feed) {
    this.feed = feed;
    this._render();
  }

  /** The page's own WebSocket state changed. */
  page(connected) {
    if (connected === this.pageConnected) return;
    this.pageConnected = connected;
    this._render();
  }

  _render() {
    const v = feedView(this.feed, this.pageConnected);
    this.root.dataset.state = v.state;
    this.root.hidden = !v.text;
    if (this.text.textContent !== v.text) this.text.textContent = v.text;
    this.root.title = (this.pageConnected && this.feed && this.feed.detail) || "";
    if (this.banner.textContent !== v.banner) this.banner.textContent = v.banner;
    this.banner.hidden = !v.banner;
    this.fleet.dataset.feed = v.state;
  }
}
