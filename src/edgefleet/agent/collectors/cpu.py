"""CPU busy and iowait percentages, total and per core, from ``cpu_times`` deltas.

The collector keeps its own previous reading (taken in the constructor) instead of using
``psutil.cpu_percent``, whose first call returns a meaningless 0.0 and whose state is global.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.base import metric_key, percent

Times = Mapping[str, float]
# On Linux guest time is already counted in user/nice (as psutil does, leave it out).
_NOT_IN_TOTAL = frozenset({"guest", "guest_nice"})
_IDLE = ("idle", "iowait")


class CpuTimes(NamedTuple):
    """One reading: seconds per mode for the whole machine and for each core."""

    total: Times
    cores: Sequence[Times]


def read_cpu_times_psutil() -> CpuTimes:
    """Read the machine's and every core's cumulative CPU times through psutil."""
    import psutil

    cores = [dict(c._asdict()) for c in psutil.cpu_times(percpu=True)]
    return CpuTimes(dict(psutil.cpu_times()._asdict()), cores)


def read_cpu_times_proc() -> CpuTimes:
    """The same from one read of ``/proc/stat``."""
    total, cores = procfs.STAT.parsed(procfs.parse_cpu_stat)
    return CpuTimes(total, cores)


read_cpu_times = read_cpu_times_proc if procfs.HAVE_PROC else read_cpu_times_psutil


def _split(prev: Times, cur: Times) -> tuple[float, float, float]:
    """Seconds in all, idle (idle and iowait) and in iowait between two readings, in one
    pass; a mode whose counter went backwards (a known iowait quirk) counts as zero."""
    total = idle = iowait = 0.0
    for mode, value in cur.items():
        if mode in _NOT_IN_TOTAL:
            continue
        delta = value - prev.get(mode, value)
        if delta <= 0.0:
            continue
        total += delta
        if mode in _IDLE:
            idle += delta
            if mode == "iowait":
                iowait = delta
    return total, idle, iowait


def busy_percent(prev: Times, cur: Times) -> float | None:
    """Share of time not idle (idle and iowait both count as idle) between two readings."""
    total, idle, _ = _split(prev, cur)
    return percent(total - idle, total)


def cpu_metrics(prev: CpuTimes, cur: CpuTimes) -> dict[str, float]:
    """Metrics between two readings; a value without elapsed time is left out. (No iowait
    where the kernel does not report it.)"""
    total, idle, iowait = _split(prev.total, cur.total)
    values: dict[str, float | None] = {
        "cpu.percent": percent(total - idle, total),
        "cpu.iowait_percent": percent(iowait, total) if "iowait" in cur.total else None,
    }
    # Cores going on/offline shift the list; skip per-core values for that round.
    if len(prev.cores) == len(cur.cores):
        keys = _core_keys(len(cur.cores))
        for key, before, after in zip(keys, prev.cores, cur.cores, strict=True):
            values[key] = busy_percent(before, after)
    return {key: value for key, value in values.items() if value is not None}


_KEYS: dict[int, tuple[str, ...]] = {}


def _core_keys(count: int) -> tuple[str, ...]:
    """``cpu.core_percent[N]`` for N below ``count`` (built once per core count)."""
    keys = _KEYS.get(count)
    if keys is None:
        keys = _KEYS[count] = tuple(metric_key("cpu.core_percent", str(i)) for i in range(count))
    return keys


class CpuCollector:
    """``cpu.percent``, ``cpu.iowait_percent`` and ``cpu.core_percent[N]``."""

    name = "cpu"

    def __init__(self, *, read: Callable[[], CpuTimes] = read_cpu_times) -> None:
        self._read = read
        self._prev = read()  # primed: the first collect measures since construction

    def collect(self) -> dict[str, float]:
        """Percentages since the previous call (or since construction)."""
        cur = self._read()
        out = cpu_metrics(self._prev, cur)
        self._prev = cur
        return out
