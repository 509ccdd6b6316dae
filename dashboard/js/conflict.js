// Identity conflicts: two agents publishing under one thing name (row.identity_conflict,
// docs/api.md). Pure text helpers shared by the fleet table and the device view.

import { clockTime } from "./format.js";

/** The streams part of a conflict: a list of stream ids or a count. */
function streamsText(streams) {
  if (Array.isArray(streams)) {
    const shown = streams.slice(0, 4).map(String).join(", ");
    return `${streams.length} streams (${shown}${streams.length > 4 ? ", …" : ""})`;
  }
  return typeof streams === "number" ? `${streams} streams` : "";
}

/** One line for a row's flag tooltip; "" when there is no conflict (null or absent). */
export function conflictText(conflict) {
  if (!conflict || typeof conflict !== "object") return "";
  const detail = typeof conflict.detail === "string" ? conflict.detail : "";
  return detail || streamsText(conflict.streams) || "two agents publish under this name";
}

/** The device view's sentence: since when, what was seen and the detail. */
export function conflictSentence(conflict) {
  const text = conflictText(conflict);
  if (!text) return "";
  const at = clockTime(conflict.since);
  const streams = streamsText(conflict.streams);
  const parts = [`Identity conflict${at ? ` since ${at}` : ""}: ${text}`];
  const named = Array.isArray(conflict.streams) && conflict.streams.some((id) => text.includes(String(id)));
  if (streams && !named && !text.includes(streams)) parts.push(`Seen: ${streams}.`);
  return parts.join(" ");
}
