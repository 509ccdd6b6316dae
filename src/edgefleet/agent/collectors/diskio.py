"""Read/write throughput and operations per second of each physical disk.

Physical means a whole disk: partitions (``sda1``, ``nvme0n1p2``, ``mmcblk0p1``) and virtual
devices (loop, ram, zram, device-mapper, md RAID, nbd, optical, floppy) are left out, so
that each byte is counted once, on the disk that moved it.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.base import Clock, RateTracker, metric_key

_NOT_PHYSICAL = re.compile(
    r"^(?:(?:loop|ram|zram|md|nbd|sr|fd)\d+"
    r"|dm-\d+"
    r"|(?:h|s|v|xv)d[a-z]+\d+"
    r"|(?:nvme\d+n\d+|mmcblk\d+)p\d+"
    r"|mmcblk\d+(?:boot\d+|rpmb))$"
)
# Counter name in psutil's sdiskio -> metric family (rate per second).
FAMILIES = {
    "read_bytes": "diskio.read_bytes_per_s",
    "write_bytes": "diskio.write_bytes_per_s",
    "read_count": "diskio.read_ops_per_s",
    "write_count": "diskio.write_ops_per_s",
}
DiskCounters = Mapping[str, Mapping[str, int]]


def read_disk_counters_psutil() -> dict[str, dict[str, int]]:
    """Raw cumulative counters per block device (psutil's own wrap fixing is off)."""
    import psutil

    stats = psutil.disk_io_counters(perdisk=True, nowrap=False) or {}
    return {name: {f: getattr(io, f) for f in FAMILIES} for name, io in stats.items()}


def read_disk_counters_proc() -> dict[str, dict[str, int]]:
    """The same from ``/proc/diskstats``."""
    return procfs.parse_diskstats(procfs.DISKSTATS.read())


read_disk_counters = read_disk_counters_proc if procfs.HAVE_PROC else read_disk_counters_psutil


@functools.lru_cache(maxsize=1024)
def is_physical_disk(name: str) -> bool:
    """True for a whole physical disk such as ``sda``, ``vda``, ``nvme0n1``, ``mmcblk0``."""
    return not _NOT_PHYSICAL.match(name)


def diskio_counters(stats: DiskCounters) -> dict[str, float]:
    """Counters of the physical disks, keyed by the metric their rate becomes."""
    out: dict[str, float] = {}
    for disk, counters in stats.items():
        if not is_physical_disk(disk):
            continue
        for field, family in FAMILIES.items():
            if field in counters:
                out[metric_key(family, disk)] = float(counters[field])
    return out


class DiskIoCollector:
    """``diskio.{read,write}_{bytes,ops}_per_s[disk]``."""

    name = "diskio"

    def __init__(
        self,
        *,
        read: Callable[[], DiskCounters] = read_disk_counters,
        clock: Clock = time.monotonic,
    ) -> None:
        self._read = read
        self._rates = RateTracker(clock)
        self._rates.update(diskio_counters(read()))  # primed: the first collect has rates

    def collect(self) -> dict[str, float]:
        """Rates since the previous call (or since construction)."""
        return self._rates.update(diskio_counters(self._read()))
