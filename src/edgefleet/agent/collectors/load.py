"""Load averages, raw and divided by the number of logical cores."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from edgefleet.agent.collectors import procfs


class LoadReading(NamedTuple):
    """The 1, 5 and 15 minute load averages and the logical core count (``None``: unknown)."""

    load1: float
    load5: float
    load15: float
    cores: int | None


def read_load_psutil() -> LoadReading:
    """Read the load averages and the logical core count through psutil."""
    import psutil

    load1, load5, load15 = psutil.getloadavg()
    return LoadReading(load1, load5, load15, psutil.cpu_count())


def read_load_proc() -> LoadReading:
    """The same from ``/proc/loadavg`` (kept open, read once per round: the process count
    looks at it too) and the online cores counted in ``/proc/stat`` (read once per round
    with the cpu collector; ``os.cpu_count`` would read sysfs again)."""
    load1, load5, load15 = (float(f) for f in procfs.LOADAVG.read().split()[:3])
    cores = len(procfs.STAT.parsed(procfs.parse_cpu_stat)[1])
    return LoadReading(load1, load5, load15, cores or None)


read_load = read_load_proc if procfs.HAVE_PROC else read_load_psutil


def load_metrics(reading: LoadReading) -> dict[str, float]:
    """``load.loadN`` and, when the core count is known, ``load.loadN_per_core``."""
    loads = {"load1": reading.load1, "load5": reading.load5, "load15": reading.load15}
    out = {f"load.{name}": float(value) for name, value in loads.items()}
    if reading.cores:
        out.update(
            {f"load.{name}_per_core": value / reading.cores for name, value in loads.items()}
        )
    return out


class LoadCollector:
    """``load.load1|5|15`` and ``load.load1|5|15_per_core``."""

    name = "load"

    def __init__(self, *, read: Callable[[], LoadReading] = read_load) -> None:
        self._read = read

    def collect(self) -> dict[str, float]:
        """Current load averages."""
        return load_metrics(self._read())
