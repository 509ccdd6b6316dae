"""Seconds since the machine booted."""

from __future__ import annotations

import time
from collections.abc import Callable

from edgefleet.agent.collectors.base import Clock


def boot_time() -> float:
    """When the machine booted (Unix time): the wall clock minus the time since boot,
    suspend included (``CLOCK_BOOTTIME``, as ``/proc/uptime`` counts it; no file read). It
    follows the wall clock when that is stepped, as psutil's boot time (``/proc/stat``'s
    ``btime``) does, but to the microsecond, not to the second."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:  # not Linux
        import psutil

        return float(psutil.boot_time())
    return time.time() - time.clock_gettime(boottime)


def uptime_seconds(now: float, boot_time: float) -> float:
    """Seconds from ``boot_time`` to ``now`` (both Unix times), never negative."""
    return max(0.0, now - boot_time)


class UptimeCollector:
    """``uptime.seconds``."""

    name = "uptime"

    def __init__(
        self,
        *,
        read_boot_time: Callable[[], float] = boot_time,
        wall_clock: Clock = time.time,
    ) -> None:
        self._read_boot_time = read_boot_time
        self._wall_clock = wall_clock

    def collect(self) -> dict[str, float]:
        """Current uptime."""
        return {"uptime.seconds": uptime_seconds(self._wall_clock(), self._read_boot_time())}
