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


def _deltas(prev: Times, cur: Times) -> dict[str, float]:
    # A mode whose counter went backwards (a known iowait quirk) counts as zero.
    return {mode: max(0.0, value - prev.get(mode, value)) for mode, value in cur.items()}


def busy_percent(prev: Times, cur: Times) -> float | None:
    """Share of time not idle (idle and iowait both count as idle) between two readings."""
    deltas = _deltas(prev, cur)
    total = sum(v for mode, v in deltas.items() if mode not in _NOT_IN_TOTAL)
    idle = sum(deltas.get(mode, 0.0) for mode in _IDLE)
    return percent(total - idle, total)


def mode_percent(prev: Times, cur: Times, mode: str) -> float | None:
    """Share of time spent in ``mode`` between two readings; ``None`` if it is not reported."""
    if mode not in cur:
        return None
    deltas = _deltas(prev, cur)
    total = sum(v for m, v in deltas.items() if m not in _NOT_IN_TOTAL)
    return percent(deltas[mode], total)


def cpu_metrics(prev: CpuTimes, cur: CpuTimes) -> dict[str, float]:
    """Metrics between two readings; a value without elapsed time is left out."""
    values: dict[str, float | None] = {
        "cpu.percent": busy_percent(prev.total, cur.total),
        "cpu.iowait_percent": mode_percent(prev.total, cur.total, "iowait"),
    }
    # Cores going on/offline shift the list; skip per-core values for that round.
    if len(prev.cores) == len(cur.cores):
        for index, (before, after) in enumerate(zip(prev.cores, cur.cores, strict=True)):
            values[metric_key("cpu.core_percent", str(index))] = busy_percent(before, after)
    return {key: value for key, value in values.items() if value is not None}


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
