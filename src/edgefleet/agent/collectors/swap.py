"""Swap space: total and the share in use (0 % when the device has no swap)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import psutil

from edgefleet.agent.collectors.base import percent


class SwapReading(NamedTuple):
    """Total and used swap bytes."""

    total: int
    used: int


def read_swap() -> SwapReading:
    """Read total and used swap."""
    sw = psutil.swap_memory()
    return SwapReading(sw.total, sw.used)


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
