"""Physical memory: total, available and the share in use (``total - available``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.base import percent


class MemoryReading(NamedTuple):
    """Total and available bytes; available includes reclaimable caches."""

    total: int
    available: int


def read_memory_psutil() -> MemoryReading:
    """Read total and available memory through psutil."""
    import psutil

    vm = psutil.virtual_memory()
    return MemoryReading(vm.total, vm.available)


def read_memory_proc() -> MemoryReading:
    """The same from ``/proc/meminfo``."""
    mem = procfs.MEMINFO.parsed(procfs.parse_meminfo)
    return MemoryReading(mem["MemTotal"], procfs.memory_available(mem))


read_memory = read_memory_proc if procfs.HAVE_PROC else read_memory_psutil


def memory_metrics(reading: MemoryReading) -> dict[str, float]:
    """``memory.total_bytes``, ``memory.available_bytes`` and ``memory.used_percent``."""
    out = {
        "memory.total_bytes": float(reading.total),
        "memory.available_bytes": float(reading.available),
    }
    used = percent(reading.total - reading.available, reading.total)
    if used is not None:
        out["memory.used_percent"] = used
    return out


class MemoryCollector:
    """Physical memory figures."""

    name = "memory"

    def __init__(self, *, read: Callable[[], MemoryReading] = read_memory) -> None:
        self._read = read

    def collect(self) -> dict[str, float]:
        """Current memory figures."""
        return memory_metrics(self._read())
