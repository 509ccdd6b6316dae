"""Every device's newest metrics as Prometheus text (``GET /metrics/devices``).

For people who already run Prometheus and Grafana: point a scrape job at the backend and
the fleet appears as ordinary series (docs/api.md, "Per-device metrics"). The fleet's own
figures stay on ``/metrics``.

- a metric key ``family`` becomes ``edgefleet_device_<family, dots as underscores>`` with
  the label ``device``; ``family[instance]`` adds the instance under a label named after
  what it is (``mountpoint`` for disk, ``disk`` for diskio, ``interface`` for net,
  ``sensor`` for temp, ``core`` for cpu, ``item`` otherwise; never ``instance``, which
  Prometheus gives the scrape target): ``disk.used_percent[/data]`` ->
  ``edgefleet_device_disk_used_percent{device="dev-1",mountpoint="/data"}``;
- ``edgefleet_device_up`` (1 online, 0 offline) and ``edgefleet_device_info`` (agent
  version) for every device; ``edgefleet_device_group`` (1) per device and rules-file group
  it belongs to; ``edgefleet_device_sample_age_seconds``;
- an offline device exposes only those, never its last values: Prometheus would store them
  as fresh at every scrape.

Cardinality: at most (devices x the keys each device may use) series: the backend holds
each device to ``EDGE_BACKEND_MAX_KEYS_PER_DEVICE`` keys (1,000; about 46 from a default
agent), so 1,000 default agents make about 50,000 series.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from edgefleet.wire.base import split_key

PREFIX = "edgefleet_device_"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True, slots=True)
class DeviceSeries:
    """What one device contributes: its state and its newest sample."""

    device: str
    online: bool
    agent_version: str | None
    sample_ts: float | None
    metrics: Mapping[str, float]
    groups: Sequence[str] = ()


_STATE = ("up", "info", "group", "sample_age_seconds")
_INSTANCE_LABEL = {"disk": "mountpoint", "diskio": "disk", "net": "interface",
                   "temp": "sensor", "cpu": "core"}


def instance_label(family: str) -> str:
    """The label name of ``family``'s instances (``disk.used_percent`` -> ``mountpoint``)."""
    return _INSTANCE_LABEL.get(family.split(".", 1)[0], "item")


def metric_name(family: str) -> str:
    """``disk.used_percent`` -> ``edgefleet_device_disk_used_percent`` (a family named like
    one of the state metrics, e.g. ``up``, gets ``_value`` appended)."""
    name = _INVALID.sub("_", family)
    return PREFIX + (name + "_value" if name in _STATE else name)


def groups_of(device: str, groups: Mapping[str, Sequence[str]]) -> list[str]:
    """The rules-file groups whose device ids or globs match ``device``."""
    return [name for name, members in groups.items()
            if any(fnmatchcase(device, glob) for glob in members)]


def label_value(value: str) -> str:
    """Escaped as the text format requires (backslash, double quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(devices: Iterable[DeviceSeries], now: float) -> str:
    """The exposition text: one HELP/TYPE header per metric, its series grouped under it."""
    state: list[str] = []
    families: dict[str, list[str]] = {}
    for dev in devices:
        d = label_value(dev.device)
        state.append(f'{PREFIX}up{{device="{d}"}} {1 if dev.online else 0}')
        version = label_value(dev.agent_version or "")
        state.append(f'{PREFIX}info{{agent_version="{version}",device="{d}"}} 1')
        state += [f'{PREFIX}group{{device="{d}",group="{label_value(g)}"}} 1'
                  for g in dev.groups]
        if not dev.online or dev.sample_ts is None:
            continue
        age = max(0.0, now - dev.sample_ts)
        state.append(f'{PREFIX}sample_age_seconds{{device="{d}"}} {age:.3f}')
        for key, value in dev.metrics.items():
            family, instance = split_key(key)
            labels = f'device="{d}"' if instance is None else (
                f'device="{d}",{instance_label(family)}="{label_value(instance)}"')
            families.setdefault(metric_name(family), []).append(f"{{{labels}}} {value!r}")
    return _text(state, families)


def _text(state: list[str], families: dict[str, list[str]]) -> str:
    lines: list[str] = []
    for name, kind, text in (
        ("up", "gauge", "1 while the device is online, 0 when offline"),
        ("info", "gauge", "the device's agent version (always 1)"),
        ("group", "gauge", "1 per rules-file group the device belongs to"),
        ("sample_age_seconds", "gauge", "age of the device's newest sample (online only)"),
    ):
        lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}"]
        lines += [s for s in state if s.startswith(f"{PREFIX}{name}{{")]
    for name in sorted(families):
        lines += [f"# HELP {name} the device's newest value of this metric",
                  f"# TYPE {name} gauge"]
        lines += [name + series for series in families[name]]
    return "\n".join(lines) + "\n"
