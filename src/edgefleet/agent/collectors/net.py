"""Bytes, packets and errors per second received and sent on each network interface."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.base import Clock, RateTracker, metric_key

# Counter name in psutil's snetio -> metric family (rate per second).
FAMILIES = {
    "bytes_recv": "net.rx_bytes_per_s",
    "bytes_sent": "net.tx_bytes_per_s",
    "packets_recv": "net.rx_packets_per_s",
    "packets_sent": "net.tx_packets_per_s",
    "errin": "net.rx_errors_per_s",
    "errout": "net.tx_errors_per_s",
}
NicCounters = Mapping[str, Mapping[str, int]]


def read_nic_counters_psutil() -> dict[str, dict[str, int]]:
    """Raw cumulative counters per interface (psutil's own wrap fixing is off)."""
    import psutil

    stats = psutil.net_io_counters(pernic=True, nowrap=False)
    return {nic: {f: getattr(io, f) for f in FAMILIES} for nic, io in stats.items()}


def read_nic_counters_proc() -> dict[str, dict[str, int]]:
    """The same from ``/proc/net/dev`` (this process's network namespace)."""
    return procfs.parse_net_dev(procfs.NET_DEV.read())


read_nic_counters = read_nic_counters_proc if procfs.HAVE_PROC else read_nic_counters_psutil


def net_counters(stats: NicCounters, exclude: Iterable[str] = ("lo",)) -> dict[str, float]:
    """Counters of every interface not in ``exclude``, keyed by the metric their rate becomes."""
    skipped = frozenset(exclude)
    out: dict[str, float] = {}
    for nic, counters in stats.items():
        if nic in skipped:
            continue
        for field, family in FAMILIES.items():
            if field in counters:
                out[metric_key(family, nic)] = float(counters[field])
    return out


class NetCollector:
    """``net.{rx,tx}_{bytes,packets,errors}_per_s[interface]``, loopback excluded."""

    name = "net"

    def __init__(
        self,
        *,
        read: Callable[[], NicCounters] = read_nic_counters,
        clock: Clock = time.monotonic,
        exclude: Iterable[str] = ("lo",),
    ) -> None:
        self._read = read
        self._exclude = frozenset(exclude)
        self._rates = RateTracker(clock)
        self._rates.update(net_counters(read(), self._exclude))  # primed: first collect has rates

    def collect(self) -> dict[str, float]:
        """Rates since the previous call (or since construction)."""
        return self._rates.update(net_counters(self._read(), self._exclude))
