"""The metric families the edgefleet agent sends, per collector, with the range of values.

One table, keyed by the collector names of ``edgefleet.agent.collectors.REGISTRY``; the
rules loader checks rule metrics and thresholds against it. Tests keep it in step with the
collectors (every registered collector is described, every family a collector produces is
listed), with the table in docs/agent.md and with the simulator.

The ``textfile`` and ``exec`` collectors also send the user's own metrics, named by the user:
``textfile.<name>`` and ``exec.<name>`` (a Prometheus metric name, lower case, no dot), listed
in :data:`OPEN_PREFIXES`; any such family is known, with any value.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from typing import Literal

Kind = Literal["percent", "non_negative", "any"]

PERCENT: Kind = "percent"
COUNT: Kind = "non_negative"
ANY: Kind = "any"

# Raspberry Pi firmware ``get_throttled`` flags, in bit order (bit n: now, bit n + 16: seen).
PI_THROTTLE_FLAGS = ("undervoltage", "freq_capped", "throttled", "soft_temp_limit")

BY_COLLECTOR: Mapping[str, Mapping[str, Kind]] = {
    "cpu": {"cpu.percent": PERCENT, "cpu.iowait_percent": PERCENT, "cpu.core_percent": PERCENT},
    "load": {f"load.{name}{tail}": COUNT for name in ("load1", "load5", "load15")
             for tail in ("", "_per_core")},
    "memory": {"memory.total_bytes": COUNT, "memory.available_bytes": COUNT,
               "memory.used_percent": PERCENT},
    "swap": {"swap.total_bytes": COUNT, "swap.used_percent": PERCENT},
    "disk": {"disk.total_bytes": COUNT, "disk.free_bytes": COUNT, "disk.used_percent": PERCENT,
             "disk.inodes_used_percent": PERCENT, "disk.error": COUNT},
    "diskio": {f"diskio.{what}_per_s": COUNT
               for what in ("read_bytes", "write_bytes", "read_ops", "write_ops")},
    "net": {f"net.{way}_{what}_per_s": COUNT
            for way in ("rx", "tx") for what in ("bytes", "packets", "errors")},
    "temp": {"temp.celsius": ANY},
    "uptime": {"uptime.seconds": COUNT},
    "procs": {"procs.count": COUNT},
    "systemd": {"systemd.failed_units": COUNT, "systemd.unit_failed": COUNT,
                "systemd.unit_active": COUNT, "systemd.unit_state": COUNT,
                "systemd.unit_restarts": COUNT},
    "processes": {"process.running": COUNT, "process.count": COUNT,
                  "process.cpu_percent": PERCENT, "process.rss_bytes": COUNT,
                  "process.restarts": COUNT},
    "textfile": {"textfile.status.files": COUNT, "textfile.status.errors": COUNT},
    "exec": {"exec.status.failed": COUNT, "exec.status.exit_code": ANY,
             "exec.status.errors": COUNT},
    "vitals": {"vitals.reboots": COUNT, "vitals.rebooted": COUNT, "vitals.clock_synced": COUNT,
               "vitals.clock_max_error_seconds": COUNT, "vitals.clock_offset_seconds": ANY,
               "vitals.root_readonly": COUNT,
               **{f"vitals.{flag}_{when}": COUNT for flag in PI_THROTTLE_FLAGS
                  for when in ("now", "seen")}},
}

# Collector -> prefix of the user's own families it sends (``textfile.myapp_queue_depth``).
OPEN_PREFIXES: Mapping[str, str] = {"textfile": "textfile.", "exec": "exec."}
_USER_NAME = re.compile(r"[a-z_][a-z0-9_]*")

FAMILIES: Mapping[str, Kind] = {
    family: kind for families in BY_COLLECTOR.values() for family, kind in families.items()
}


def is_user_family(family: str) -> bool:
    """True for a family of the user's own metrics (``textfile.<name>``, ``exec.<name>``)."""
    return any(
        family.startswith(prefix) and _USER_NAME.fullmatch(family[len(prefix) :]) is not None
        for prefix in OPEN_PREFIXES.values()
    )


def unknown_family(family: str) -> str | None:
    """None for a known family, else a one-line reason naming the known ones."""
    if family in FAMILIES or is_user_family(family):
        return None
    close = difflib.get_close_matches(family, FAMILIES, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    known = ", ".join(sorted(FAMILIES))
    own = " or a user metric textfile.<name> / exec.<name>"
    return f"unknown metric family {family!r} ({hint}known: {known}{own})"


def impossible_value(family: str, value: float) -> str | None:
    """None when ``family`` can take ``value``, else a one-line reason."""
    kind = FAMILIES.get(family, ANY)
    if not math.isfinite(value):
        return f"must be a finite number (got {value!r})"
    if kind == PERCENT and not 0 <= value <= 100:
        return f"{family} is a percentage: must be within 0-100 (got {value:g})"
    if kind == COUNT and value < 0:
        return f"{family} is never negative: must be >= 0 (got {value:g})"
    return None
