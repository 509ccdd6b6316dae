"""Number of processes on the machine."""

from __future__ import annotations

from collections.abc import Callable

from edgefleet.agent.collectors import procfs


def count_processes() -> int:
    """How many processes exist right now."""
    if procfs.HAVE_PROC:
        return len(procfs.pids())  # listed once per round with the processes collector
    import psutil

    return len(psutil.pids())


class ProcsCollector:
    """``procs.count``."""

    name = "procs"

    def __init__(self, *, read: Callable[[], int] = count_processes) -> None:
        self._read = read

    def collect(self) -> dict[str, float]:
        """Current process count."""
        return {"procs.count": float(self._read())}
