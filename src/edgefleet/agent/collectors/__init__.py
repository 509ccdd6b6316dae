"""The agent's metric collectors: one module each, one line each in :data:`REGISTRY`.

Every module splits a thin reader (psutil, a file, a command; injectable, so tests pass fakes)
from pure parsing and maths tested on literal inputs. A registry entry builds its collector
from :class:`CollectorOptions` (the ``systemd``, ``processes``, ``textfile``, ``exec`` and
``vitals`` settings); the others ignore them. :func:`collect_all` runs them all; a failing one
never stops the others and is named in the returned ``failed`` list.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Protocol

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.cpu import CpuCollector
from edgefleet.agent.collectors.disk import DiskCollector
from edgefleet.agent.collectors.diskio import DiskIoCollector
from edgefleet.agent.collectors.exec_cmd import ExecCollector
from edgefleet.agent.collectors.load import LoadCollector
from edgefleet.agent.collectors.memory import MemoryCollector
from edgefleet.agent.collectors.net import NetCollector
from edgefleet.agent.collectors.options import CollectorOptions
from edgefleet.agent.collectors.processes import ProcessesCollector
from edgefleet.agent.collectors.procs import ProcsCollector
from edgefleet.agent.collectors.swap import SwapCollector
from edgefleet.agent.collectors.systemd import SystemdCollector
from edgefleet.agent.collectors.temp import TempCollector
from edgefleet.agent.collectors.textfile import TextfileCollector
from edgefleet.agent.collectors.uptime import UptimeCollector
from edgefleet.agent.collectors.vitals import VitalsCollector
from edgefleet.agent.contracts import Collector
from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.errors import ConfigError
from edgefleet.wire.base import METRIC_KEY_PATTERN

__all__ = ["REGISTRY", "CollectorOptions", "build_collectors", "collect_all"]

log = logging.getLogger(__name__)
_DEFAULTS = CollectorOptions()


class Factory(Protocol):
    """Builds one collector from the options (those it does not use are ignored)."""

    def __call__(self, options: CollectorOptions = ..., /) -> Collector:
        """A new collector."""
        ...


def _plain(cls: Callable[[], Collector]) -> Factory:
    def make(options: CollectorOptions = _DEFAULTS, /) -> Collector:
        del options
        return cls()

    return make


def _systemd(o: CollectorOptions = _DEFAULTS, /) -> Collector:
    return SystemdCollector(units=o.systemd_units, interval_s=o.systemd_interval_s)


def _processes(o: CollectorOptions = _DEFAULTS, /) -> Collector:
    return ProcessesCollector(specs=o.processes)


def _textfile(o: CollectorOptions = _DEFAULTS, /) -> Collector:
    return TextfileCollector(folder=o.textfile_dir, max_keys=o.custom_max_keys)


def _exec(o: CollectorOptions = _DEFAULTS, /) -> Collector:
    return ExecCollector(
        argv=o.exec_argv, timeout_s=o.exec_timeout_s, interval_s=o.exec_interval_s,
        max_keys=o.custom_max_keys,
    )  # fmt: skip


def _vitals(o: CollectorOptions = _DEFAULTS, /) -> Collector:
    return VitalsCollector(state_dir=o.state_dir)


REGISTRY: dict[str, Factory] = {
    "cpu": _plain(CpuCollector),
    "load": _plain(LoadCollector),
    "memory": _plain(MemoryCollector),
    "swap": _plain(SwapCollector),
    "disk": _plain(DiskCollector),
    "diskio": _plain(DiskIoCollector),
    "net": _plain(NetCollector),
    "temp": _plain(TempCollector),
    "uptime": _plain(UptimeCollector),
    "procs": _plain(ProcsCollector),
    "systemd": _systemd,
    "processes": _processes,
    "textfile": _textfile,
    "exec": _exec,
    "vitals": _vitals,
}

_KEY_RE = re.compile(METRIC_KEY_PATTERN)
_LOG_LIMIT = RateLimitedLog(60.0)
_GOOD_KEYS: set[str] = set()  # keys that matched the pattern (most repeat every round)
_GOOD_KEYS_MAX = 20_000


def _check_names(names: Iterable[str], setting: str) -> list[str]:
    checked = list(dict.fromkeys(names))
    for name in checked:
        if name not in REGISTRY:
            known = ", ".join(REGISTRY)
            raise ConfigError(f"{setting}: unknown collector {name!r} (known: {known})")
    return checked


def build_collectors(
    enabled: Iterable[str] | None = None,
    disabled: Iterable[str] = (),
    options: CollectorOptions | None = None,
) -> list[Collector]:
    """Instantiate the enabled collectors (all when ``None``) minus the disabled ones.

    ``options`` configures the systemd, processes, textfile, exec and vitals collectors; the
    agent passes ``CollectorOptions.from_config(config)``. Without them those collectors run
    with their defaults (no units listed, no processes, no folder, no command, no state).
    """
    opts = _DEFAULTS if options is None else options
    wanted = _check_names(REGISTRY if enabled is None else enabled, "enabled collectors")
    skipped = set(_check_names(disabled, "disabled collectors"))
    collectors: list[Collector] = []
    for name in wanted:
        if name in skipped:
            continue
        try:
            collectors.append(REGISTRY[name](opts))
        except Exception as exc:
            raise ConfigError(f"collector {name!r} cannot start ({exc}); disable it") from exc
    return collectors


def _good_key(key: str) -> bool:
    if key in _GOOD_KEYS:
        return True
    if _KEY_RE.fullmatch(key) is None:
        return False
    if len(_GOOD_KEYS) >= _GOOD_KEYS_MAX:  # keys that keep changing: start over, stay bounded
        _GOOD_KEYS.clear()
    _GOOD_KEYS.add(key)
    return True


def _valid(name: str, metrics: dict[str, float], limiter: RateLimitedLog) -> dict[str, float]:
    if _GOOD_KEYS.issuperset(metrics) and all(map(math.isfinite, metrics.values())):
        return metrics  # the usual round: keys seen before, finite values (no call per key)
    good = {k: v for k, v in metrics.items() if _good_key(k) and math.isfinite(v)}
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
    parts: list[tuple[str, dict[str, float]]] = []
    with procfs.one_round():  # a /proc file needed by several collectors is read once
        for collector in collectors:
            started = 0.0 if durations is None else time.monotonic()
            try:
                got = collector.collect()
            except Exception as exc:  # noqa: BLE001 - one collector's failure must not stop others
                failed.append(collector.name)
                _report(collector.name, exc, limiter)
            else:
                parts.append((collector.name, got))
                metrics.update(got)
            if durations is not None:
                durations[collector.name] = time.monotonic() - started
    if _GOOD_KEYS.issuperset(metrics) and all(map(math.isfinite, metrics.values())):
        return metrics, failed  # the usual round: every key seen before, every value finite
    metrics = {}
    for name, got in parts:  # checked one collector at a time, to name the one at fault
        metrics.update(_valid(name, got, limiter))
    return metrics, failed
