"""Temperatures of the sensors the hardware exposes (none in most VMs and containers)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import psutil

from edgefleet.agent.collectors.base import metric_key

# chip name -> (label, degrees Celsius) per sensor, in the order the chip lists them.
Sensors = Mapping[str, Sequence[tuple[str, float]]]


def read_sensors() -> dict[str, list[tuple[str, float]]]:
    """Every temperature sensor, or nothing where the platform has none."""
    if not hasattr(psutil, "sensors_temperatures"):
        return {}
    chips = psutil.sensors_temperatures()
    return {chip: [(s.label, s.current) for s in entries] for chip, entries in chips.items()}


def temp_metrics(sensors: Sensors) -> dict[str, float]:
    """``temp.celsius[chip/label]``; a missing or repeated label is made unique by position."""
    out: dict[str, float] = {}
    for chip, entries in sensors.items():
        seen: set[str] = set()
        for index, (label, celsius) in enumerate(entries):
            name = label.strip() or str(index)
            if name in seen:
                name = f"{name} ({index})"
            seen.add(name)
            if math.isfinite(celsius):
                out[metric_key("temp.celsius", f"{chip}/{name}")] = float(celsius)
    return out


class TempCollector:
    """``temp.celsius[chip/label]`` for each sensor; an empty result where there are none."""

    name = "temp"

    def __init__(self, *, read: Callable[[], Sensors] = read_sensors) -> None:
        self._read = read

    def collect(self) -> dict[str, float]:
        """Current temperatures."""
        return temp_metrics(self._read())
