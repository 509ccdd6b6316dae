"""Temperatures of the sensors the hardware exposes (none in most VMs and containers).

On Linux the sensor files are found as psutil finds them (``hwmon`` ``temp*_input`` with the
chip's ``name`` and the sensor's ``label``; the thermal zones when there is no hwmon sensor),
but only every :data:`RESCAN_S` seconds: which sensors exist is a fact of the hardware, and
the globbing and reading of names and labels cost more than the values. Each round reads
only the value files.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.base import Clock, metric_key

# chip name -> (label, degrees Celsius) per sensor, in the order the chip lists them.
Sensors = Mapping[str, Sequence[tuple[str, float]]]
RESCAN_S = 600.0
_CORETEMP = re.compile(r"/sys/devices/platform/coretemp.*/hwmon/")


def read_sensors_psutil() -> dict[str, list[tuple[str, float]]]:
    """Every temperature sensor through psutil, or nothing where the platform has none."""
    import psutil

    if not hasattr(psutil, "sensors_temperatures"):
        return {}
    chips = psutil.sensors_temperatures()
    return {chip: [(s.label, s.current) for s in entries] for chip, entries in chips.items()}


class SensorFile(NamedTuple):
    """One sensor: its chip, its label and the file holding its value (millidegrees)."""

    chip: str
    label: str
    path: str


def _text(path: str) -> str:
    return Path(path).read_text(encoding="utf-8", errors="replace").strip()


def _glob(root: str, pattern: str) -> list[str]:
    return [str(p) for p in Path(root).glob(pattern)]


def _hwmon_bases() -> list[str]:
    names = _glob("/sys/class/hwmon", "hwmon*/temp*_*")
    names += _glob("/sys/class/hwmon", "hwmon*/device/temp*_*")
    bases = sorted({n.split("_")[0] for n in names})
    for name in _glob("/sys/devices/platform", "coretemp.*/hwmon/hwmon*/temp*_*"):
        if _CORETEMP.sub("/sys/class/hwmon/", name) not in bases:
            bases.append(name)  # psutil keeps the whole name here, which never reads
    return bases


def find_sensors() -> list[SensorFile]:
    """The sensors psutil would report, in its order (those unreadable now are left out)."""
    found: list[SensorFile] = []
    bases = _hwmon_bases()
    for base in bases:
        try:
            float(_text(base + "_input"))
            chip = _text(str(Path(base).parent / "name"))
        except (OSError, ValueError):
            continue
        try:
            label = _text(base + "_label")
        except OSError:
            label = ""
        found.append(SensorFile(chip, label, base + "_input"))
    if not bases:
        for zone in sorted(set(_glob("/sys/class/thermal", "thermal_zone*"))):
            try:
                float(_text(f"{zone}/temp"))
                chip = _text(f"{zone}/type")
            except (OSError, ValueError):
                continue
            found.append(SensorFile(chip, "", f"{zone}/temp"))
    return found


class SysfsSensors:
    """A reader of the sensors' values, finding the sensors again every ``rescan_s``."""

    def __init__(
        self,
        *,
        find: Callable[[], list[SensorFile]] = find_sensors,
        read: Callable[[str], str] = _text,
        rescan_s: float = RESCAN_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self._find, self._read, self._rescan, self._clock = find, read, rescan_s, clock
        self._found: list[SensorFile] = []
        self._found_at: float | None = None

    def __call__(self) -> dict[str, list[tuple[str, float]]]:
        now = self._clock()
        if self._found_at is None or now - self._found_at >= self._rescan:
            self._found, self._found_at = self._find(), now
        out: dict[str, list[tuple[str, float]]] = {}
        for sensor in self._found:
            try:
                celsius = float(self._read(sensor.path)) / 1000.0
            except (OSError, ValueError):
                continue  # gone or failing this round (psutil leaves it out too)
            out.setdefault(sensor.chip, []).append((sensor.label, celsius))
        return out


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

    def __init__(self, *, read: Callable[[], Sensors] | None = None) -> None:
        if read is None:
            read = SysfsSensors() if procfs.HAVE_PROC else read_sensors_psutil
        self._read = read

    def collect(self) -> dict[str, float]:
        """Current temperatures."""
        return temp_metrics(self._read())
