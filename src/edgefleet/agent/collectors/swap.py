"""Swap space: total and the share in use (0 % when the device has no swap)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.base import percent


class SwapReading(NamedTuple):
    """Total and used swap bytes."""

    total: int
    used: int


def read_swap_psutil() -> SwapReading:
    """Read total and used swap through psutil."""
    import psutil

    sw = psutil.swap_memory()
    return SwapReading(sw.total, sw.used)


def read_swap_proc() -> SwapReading:
    """The same from ``/proc/meminfo`` (read once per round with the memory collector)."""
    mem = procfs.MEMINFO.parsed(procfs.parse_meminfo)
    return SwapReading(mem["SwapTotal"], mem["SwapTotal"] - mem["SwapFree"])


read_swap = read_swap_proc if procfs.HAVE_PROC else read_swap_psutil


def swap_metrics(reading: SwapReading) -> dict[str, float]:
    """``swap.total_bytes`` and ``swap.used_percent``."""
    used = percent(reading.used, reading.total)
    return {
        "swap.total_bytes": float(reading.total),
        "swap.used_percent": 0.0 if used is None else used,
    }


class SwapCollector:
    """Swap figures."""

    name = "swap"

    def __init__(self, *, read: Callable[[], SwapReading] = read_swap) -> None:
        self._read = read

    def collect(self) -> dict[str, float]:
        """Current swap figures."""
        return swap_metrics(self._read())
