"""Identity conflicts: two agents publishing under one thing name (``docs/protocol.md``).

Every agent numbers its samples in its own stream. When a second agent starts under a name
already in use, its first message retires the first agent's stream, exactly as a restart
would; from then on the first agent's messages arrive on a retired stream and are refused.
After a real restart the old stream sends nothing more (at most a redelivery of seqs already
seen); a second live agent keeps sending, its seqs advancing. So ``returns`` messages of
retired streams, each with a higher seq than the last one seen of that stream, within
``window_s`` flag the device. The flag clears once no retired stream has been heard for
``quiet_s`` while the current stream kept arriving.

State exists only for devices where a retired stream came back, at most ``max_streams``
seqs each, and is dropped when the episode is over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_RETURNS = 3
DEFAULT_WINDOW_S = 600.0
DEFAULT_QUIET_S = 300.0


@dataclass(slots=True)
class _Watch:
    first: float  # the first return counted in the current window
    last_other: float  # the newest message of a retired stream
    returns: int = 0
    highs: dict[str, int] = field(default_factory=dict)  # retired stream -> highest seq seen
    current: str = ""
    since: float | None = None  # flagged since (backend clock)
    refused: int = 0  # samples of retired streams refused during the episode


class IdentityWatch:
    """Flags devices whose messages alternate between streams; one thread only."""

    def __init__(
        self, *, returns: int = DEFAULT_RETURNS, window_s: float = DEFAULT_WINDOW_S,
        quiet_s: float = DEFAULT_QUIET_S, max_streams: int = 8,
    ) -> None:
        self._returns, self._window, self._quiet = returns, window_s, quiet_s
        self._max_streams = max_streams
        self.watching: dict[str, _Watch] = {}

    def retired(
        self, device: str, *, current: str, stream: str, top_seq: int, samples: int,
        now: float,
    ) -> bool:
        """A message of retired ``stream`` arrived; True when this flags ``device``."""
        w = self.watching.get(device)
        if w is None:
            w = self.watching[device] = _Watch(first=now, last_other=now)
        elif w.since is None and now - w.first > self._window:
            w.first, w.returns = now, 0
        w.last_other, w.current = now, current
        w.refused += samples
        if top_seq > w.highs.get(stream, -1):
            w.highs.pop(stream, None)  # re-insert: the dict stays ordered by recency
            w.highs[stream] = top_seq
            if len(w.highs) >= self._max_streams:
                del w.highs[next(iter(w.highs))]
            w.returns += 1
        if w.since is None and w.returns >= self._returns:
            w.since = now
            return True
        return False

    def heard(self, device: str, now: float) -> bool:
        """A message of ``device``'s current stream; True when this clears its flag."""
        w = self.watching.get(device)
        if w is None:
            return False
        quiet = now - w.last_other
        if w.since is None:
            if quiet > self._window:
                del self.watching[device]
            return False
        if quiet < self._quiet:
            return False
        del self.watching[device]
        return True

    def conflict(self, device: str) -> dict[str, Any] | None:
        """The identity-conflict record of ``device``, or None when it is not flagged."""
        w = self.watching.get(device)
        if w is None or w.since is None:
            return None
        streams = [w.current, *(s for s in reversed(w.highs) if s != w.current)]
        return {
            "since": w.since,
            "streams": streams,
            "refused_samples": w.refused,
            "last_refused": w.last_other,
            "detail": _detail(device, streams),
        }


def _detail(device: str, streams: list[str]) -> str:
    names = ", ".join(streams[:-1]) + " and " + streams[-1]
    return (f"two agents are publishing as {device}: streams {names} alternate; "
            "each device needs its own identity (thing name and certificate)")
