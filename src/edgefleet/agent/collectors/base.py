"""Pure helpers shared by the collectors: metric keys, percentages and counter rates."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping

Clock = Callable[[], float]
MAX_INSTANCE_CHARS = 200
# Square brackets delimit the instance in a key; control characters have no place in it.
_INSTANCE_TABLE = str.maketrans({"[": "(", "]": ")", "\n": " ", "\r": " ", "\t": " "})


@functools.lru_cache(maxsize=4096)  # the same keys come back every round
def metric_key(family: str, instance: str | None = None) -> str:
    """``family`` or ``family[instance]``, with brackets in the instance turned into parens."""
    if instance is None:
        return family
    clean = instance.translate(_INSTANCE_TABLE)[:MAX_INSTANCE_CHARS] or "_"
    return f"{family}[{clean}]"


def percent(part: float, whole: float) -> float | None:
    """``100 * part / whole`` clamped to 0..100, or ``None`` when ``whole`` is not positive."""
    if whole <= 0:
        return None
    return min(100.0, max(0.0, 100.0 * part / whole))


def counter_rates(
    prev: Mapping[str, float], cur: Mapping[str, float], elapsed_s: float
) -> dict[str, float]:
    """Per-second rates of counters present in both snapshots.

    A counter that went backwards (a 32-bit wrap, a driver reload, a re-created interface)
    yields no rate this round instead of a negative or huge one; it resumes next round.
    """
    if elapsed_s <= 0:
        return {}
    out: dict[str, float] = {}
    for key, value in cur.items():
        before = prev.get(key)
        if before is None or value < before:
            continue
        out[key] = (value - before) / elapsed_s
    return out


class RateTracker:
    """Keeps the previous counter snapshot and turns each new one into rates."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._prev: dict[str, float] = {}
        self._prev_t: float | None = None

    def update(self, counters: Mapping[str, float]) -> dict[str, float]:
        """Store ``counters`` (taken now) and return rates since the previous update."""
        now = self._clock()
        out = (
            {} if self._prev_t is None else counter_rates(self._prev, counters, now - self._prev_t)
        )
        self._prev, self._prev_t = dict(counters), now
        return out
