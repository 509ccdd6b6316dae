"""Pure helpers that turn backend state into the API's JSON shapes (docs/api.md)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgefleet.backend.records import DeviceRow, History
from edgefleet.notify.model import severity_rank


def _max_family(metrics: Mapping[str, float], family: str) -> float | None:
    """The highest value of ``family`` and ``family[*]`` (both are valid keys, docs/protocol.md)."""
    keys = _family_keys(tuple(metrics), family)
    return max(metrics[k] for k in keys) if keys else None


@functools.lru_cache(maxsize=4096)
def _family_keys(keys: tuple[str, ...], family: str) -> tuple[str, ...]:
    """The keys of ``family`` among ``keys`` (devices of one kind send the same keys, so a row
    rebuilt every frame finds them without scanning every key again)."""
    prefix = family + "["  # as split_key(k)[0] == family, without splitting every key
    return tuple(k for k in keys if k == family or k.startswith(prefix))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def worst(severities: Iterable[str]) -> str | None:
    """The most severe of ``severities`` (critical > warning > info) or None."""
    ranked = sorted(severities, key=severity_rank)
    return ranked[0] if ranked else None


def device_row(
    row: DeviceRow,
    latest: Mapping[str, float],
    spark: Sequence[float],
    firing: Sequence[str],
    lost: int,
    *,
    identity_conflict: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One device as the dashboard shows it. ``identity_conflict``: ``Ingest.conflict()``."""
    health = row.health or {}
    return {
        "id": row.device,
        "online": row.status == "online",
        "status": row.status,
        "last_seen": row.last_seen,
        "last_sample_ts": row.last_sample_ts,
        "interval_s": row.interval_s,
        "cpu": _round(latest.get("cpu.percent")),
        "memory": _round(latest.get("memory.used_percent")),
        "disk": _round(_max_family(latest, "disk.used_percent")),
        "temp": _round(_max_family(latest, "temp.celsius")),
        "load1": _round(latest.get("load.load1")),
        "spark": [round(v, 1) for v in spark],
        "firing": len(firing),
        "severity": worst(firing),
        "lost": lost,
        "identity_conflict": None if identity_conflict is None else dict(identity_conflict),
        "agent": {
            k: health[k]
            for k in ("queue_depth", "dropped_total", "rss_bytes", "agent_version", "oldest_age_s",
                      "uncommitted")
            if health.get(k) is not None
        },
    }


def problem_rank(row: Mapping[str, Any]) -> tuple[int, str]:
    """Sort key: critical alerts, offline, other alerts, high usage or temperature
    (>= 85 %, >= 80 °C), then the rest; by id. The dashboard's rank.js sorts the same way
    (tests/browser/test_dashboard_js.py compares the two on the same rows)."""
    usage = max((row.get(k) or 0.0) for k in ("cpu", "memory", "disk"))
    hot = (row.get("temp") or 0.0) >= 80
    if row["severity"] == "critical":
        rank = 0
    elif not row["online"]:
        rank = 1
    elif row["severity"] is not None:
        rank = 2
    elif usage >= 85 or hot:
        rank = 3
    else:
        rank = 4
    return rank, str(row["id"])


def history_json(history: History, keys: list[str]) -> dict[str, Any]:
    """Chart-ready columns: timestamps and one average series per key."""
    resolution = "raw" if history.step_s == 0 else f"{int(history.step_s)}s"
    return {
        "t": history.ts,
        "series": {k: history.avg.get(k, [None] * len(history.ts)) for k in keys},
        "min": {k: history.min.get(k, []) for k in keys} if history.step_s else {},
        "max": {k: history.max.get(k, []) for k in keys} if history.step_s else {},
        "resolution": resolution,
        "source": history.source,
    }


def prometheus(families: list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]) -> str:
    """Render (name, type, help, [(labels, value)]) as Prometheus text exposition."""
    lines: list[str] = []
    for name, kind, text, samples in families:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in samples:
            lab = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{lab}}} {value:g}" if lab else f"{name} {value:g}")
    return "\n".join(lines) + "\n"
