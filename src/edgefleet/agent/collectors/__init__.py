"""The agent's metric collectors: one module each, one line each in :data:`REGISTRY`.

Every module splits a thin psutil reader (injectable, so tests pass fakes) from pure maths
tested on literal inputs. :func:`collect_all` runs them all; a failing one never stops the
others and is named in the returned ``failed`` list.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, MutableMapping

from edgefleet.agent.collectors.cpu import CpuCollector
from edgefleet.agent.collectors.disk import DiskCollector
from edgefleet.agent.collectors.diskio import DiskIoCollector
from edgefleet.agent.collectors.load import LoadCollector
from edgefleet.agent.collectors.memory import MemoryCollector
from edgefleet.agent.collectors.net import NetCollector
from edgefleet.agent.collectors.procs import ProcsCollector
from edgefleet.agent.collectors.swap import SwapCollector
from edgefleet.agent.collectors.temp import TempCollector
from edgefleet.agent.collectors.uptime import UptimeCollector
from edgefleet.agent.contracts import Collector
from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.errors import ConfigError
from edgefleet.wire.base import METRIC_KEY_PATTERN

__all__ = ["REGISTRY", "build_collectors", "collect_all"]

log = logging.getLogger(__name__)

REGISTRY: dict[str, Callable[[], Collector]] = {
    "cpu": CpuCollector,
    "load": LoadCollector,
    "memory": MemoryCollector,
    "swap": SwapCollector,
    "disk": DiskCollector,
    "diskio": DiskIoCollector,
    "net": NetCollector,
    "temp": TempCollector,
    "uptime": UptimeCollector,
    "procs": ProcsCollector,
}

_KEY_RE = re.compile(METRIC_KEY_PATTERN)
_LOG_LIMIT = RateLimitedLog(60.0)


def _check_names(names: Iterable[str], setting: str) -> list[str]:
    checked = list(dict.fromkeys(names))
    for name in checked:
        if name not in REGISTRY:
            known = ", ".join(REGISTRY)
            raise ConfigError(f"{setting}: unknown collector {name!r} (known: {known})")
    return checked


def build_collectors(
    enabled: Iterable[str] | None = None, disabled: Iterable[str] = ()
) -> list[Collector]:
    """Instantiate the enabled collectors (all when ``None``) minus the disabled ones."""
    wanted = _check_names(REGISTRY if enabled is None else enabled, "enabled collectors")
    skipped = set(_check_names(disabled, "disabled collectors"))
    collectors: list[Collector] = []
    for name in wanted:
        if name in skipped:
            continue
        try:
            collectors.append(REGISTRY[name]())
        except Exception as exc:
            raise ConfigError(f"collector {name!r} cannot start ({exc}); disable it") from exc
    return collectors


def _valid(name: str, metrics: dict[str, float], limiter: RateLimitedLog) -> dict[str, float]:
    good = {k: v for k, v in metrics.items() if _KEY_RE.fullmatch(k) and math.isfinite(v)}
    if len(good) < len(metrics):
        bad = sorted(set(metrics) - set(good))
        if limiter.allow(f"{name}:bad") is not None:
            log.warning("metrics dropped", extra=kv(collector=name, keys=bad[:5]))
    return good


def _report(name: str, exc: Exception, limiter: RateLimitedLog) -> None:
    suppressed = limiter.allow(name)
    if suppressed is not None:
        error = f"{type(exc).__name__}: {exc}"
        fields = kv(collector=name, error=error, suppressed=suppressed)
        log.warning("collector failed", extra=fields)


def collect_all(
    collectors: Iterable[Collector],
    *,
    durations: MutableMapping[str, float] | None = None,
    limiter: RateLimitedLog | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Merged metrics of every collector and the names of those that raised.

    Each failure is logged at most once a minute per collector. A key that breaks the wire
    contract or a non-finite value is dropped (and logged) so the sample stays valid. When
    ``durations`` is given, each collector's run time in seconds is stored in it.
    """
    limiter = _LOG_LIMIT if limiter is None else limiter
    metrics: dict[str, float] = {}
    failed: list[str] = []
    for collector in collectors:
        started = time.monotonic()
        try:
            metrics.update(_valid(collector.name, collector.collect(), limiter))
        except Exception as exc:  # noqa: BLE001 - one collector's failure must not stop the rest
            failed.append(collector.name)
            _report(collector.name, exc, limiter)
        if durations is not None:
            durations[collector.name] = time.monotonic() - started
    return metrics, failed
