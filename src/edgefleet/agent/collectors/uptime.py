"""Seconds since the machine booted."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from edgefleet.agent.collectors.base import Clock


def uptime_seconds(now: float, boot_time: float) -> float:
    """Seconds from ``boot_time`` to ``now`` (both Unix times), never negative."""
    return max(0.0, now - boot_time)


class UptimeCollector:
    """``uptime.seconds``."""

    name = "uptime"

    def __init__(
        self,
        *,
        read_boot_time: Callable[[], float] = psutil.boot_time,
        wall_clock: Clock = time.time,
    ) -> None:
        self._read_boot_time = read_boot_time
        self._wall_clock = wall_clock

    def collect(self) -> dict[str, float]:
        """Current uptime."""
        return {"uptime.seconds": uptime_seconds(self._wall_clock(), self._read_boot_time())}
