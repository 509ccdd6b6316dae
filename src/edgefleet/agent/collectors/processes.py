"""Processes the user names: running or not, how many, CPU, memory, restarts seen.

A spec is ``name`` (the process name exactly, as ``ps -o comm`` shows it, e.g. ``nginx``) or
``label=regex`` (the regex searched in the command line, arguments joined by spaces; the
label names the keys). Keys, per label: ``process.running`` (0/1), ``process.count``,
``process.cpu_percent`` (share of the whole machine, 0-100), ``process.rss_bytes`` and
``process.restarts`` (restarts seen since the agent started: a matching process disappeared
and a new one appeared later, in the same round or after a gap).

Cost: a process's name and start time (one read of ``/proc/<pid>/stat``) are read when its
PID first appears and once more on the next round (to see the program it ``exec``-ed into);
its command line only when a spec could use it (a regex spec, or a name the kernel cut at 15
characters). Afterwards only the PID list (``/proc``) and, for matching processes, their CPU
times and RSS are read each round.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from edgefleet.agent.collectors import procfs
from edgefleet.agent.collectors.base import Clock, metric_key, percent
from edgefleet.agent.collectors.processes_read import (
    COMM_MAX,
    PROC,
    Identity,
    Usage,
    read_identity,
    read_identity_proc,
    read_usage,
)

MAX_USAGE_READS = 256  # per spec and round; count and restarts still cover every match
Ident = tuple[int, float]  # pid, create time


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What to look for: an exact process name, or a regex on the command line."""

    label: str
    name: str | None = None
    pattern: re.Pattern[str] | None = None

    def matches(self, name: str, cmdline: str) -> bool:
        """True when a process with this name and command line is one of ours."""
        if self.pattern is not None:
            return self.pattern.search(cmdline) is not None
        return name == self.name


def parse_spec(text: str) -> ProcessSpec:
    """``name`` or ``label=regex``; ``ValueError`` with a one-line reason when malformed."""
    label, sep, pattern = text.partition("=")
    label = label.strip()
    if not label or len(label) > 64 or any(c in label for c in "[]\n\r\t"):
        raise ValueError(f"process spec {text!r}: the name/label must be 1-64 chars, no brackets")
    if not sep:
        return ProcessSpec(label, name=label)
    if not pattern:
        raise ValueError(f"process spec {text!r}: empty pattern after '='")
    try:
        return ProcessSpec(label, pattern=re.compile(pattern))
    except re.error as exc:
        raise ValueError(f"process spec {text!r}: bad regex ({exc})") from None


def cmdline_needed(specs: Sequence[ProcessSpec]) -> Callable[[str], bool]:
    """Whether matching ``specs`` needs a process's command line, given its kernel name: a
    regex spec always; a name spec only to complete a name the kernel cut at 15 characters."""
    if any(s.pattern is not None for s in specs):
        return lambda comm: True
    names = [s.name for s in specs if s.name is not None]
    return lambda comm: len(comm) >= COMM_MAX and any(n.startswith(comm) for n in names)


default_identify = read_identity_proc if PROC else read_identity


def _list_pids() -> list[int]:
    """Every PID (``/proc`` listed once per round with the procs collector)."""
    if procfs.HAVE_PROC:
        return procfs.pids()
    import psutil

    return psutil.pids()


@dataclass(slots=True)
class _Known:
    identity: Identity | None
    sightings: int
    labels: tuple[str, ...]  # the specs this process matches


class ProcessScanner:
    """Which processes match which spec, reading each new PID's identity at most twice."""

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        pids: Callable[[], Iterable[int]] = _list_pids,
        identify: Callable[[int], Identity | None] = default_identify,
    ) -> None:
        self._specs, self._pids, self._identify = list(specs), pids, identify
        self._known: dict[int, _Known] = {}
        self._last: tuple[list[int], dict[str, list[tuple[int, Identity]]]] | None = None

    def scan(self) -> dict[str, list[tuple[int, Identity]]]:
        """Per spec label, the matching ``(pid, identity)`` pairs in PID order."""
        current = sorted(self._pids())
        if self._last is not None and self._last[0] == current:  # no process came or went
            return {label: list(found) for label, found in self._last[1].items()}
        known = {pid: self._known[pid] for pid in current if pid in self._known}
        out: dict[str, list[tuple[int, Identity]]] = {s.label: [] for s in self._specs}
        for pid in current:
            entry = known.get(pid)
            if entry is None or entry.sightings < 2:
                count = 1 if entry is None else entry.sightings + 1
                entry = known[pid] = self._look(pid, count)
            for label in entry.labels:
                if entry.identity is not None:
                    out[label].append((pid, entry.identity))
        self._known = known
        settled = all(entry.sightings >= 2 for entry in known.values())
        self._last = (current, {k: list(v) for k, v in out.items()}) if settled else None
        return out

    def _look(self, pid: int, sightings: int) -> _Known:
        ident = self._identify(pid)
        if ident is None:
            return _Known(None, sightings, ())
        labels = tuple(s.label for s in self._specs if s.matches(ident.name, ident.cmdline))
        return _Known(ident, sightings, labels)


@dataclass(frozen=True, slots=True)
class RestartState:
    """Per spec: the processes seen last round, those lost and not yet replaced, the total."""

    idents: frozenset[Ident] | None = None
    lost: int = 0
    restarts: int = 0


def step_restarts(state: RestartState, current: frozenset[Ident]) -> RestartState:
    """Count a restart for each new process that replaces one that disappeared."""
    if state.idents is None:
        return RestartState(current, 0, state.restarts)
    gone = len(state.idents - current)
    new = len(current - state.idents)
    lost = state.lost + gone
    replaced = min(lost, new)
    return RestartState(current, lost - replaced, state.restarts + replaced)


def cpu_share(
    before: Mapping[Ident, float], after: Mapping[Ident, float], elapsed_s: float, cpus: int
) -> float | None:
    """CPU used by processes present in both readings, as a share of the whole machine."""
    if elapsed_s <= 0 or cpus <= 0:
        return None
    used = sum(max(0.0, cpu - before[i]) for i, cpu in after.items() if i in before)
    return percent(used, elapsed_s * cpus)


class ProcessesCollector:
    """``process.{running,count,cpu_percent,rss_bytes,restarts}[label]`` for each spec."""

    name = "processes"

    def __init__(
        self,
        *,
        specs: Sequence[str] = (),
        pids: Callable[[], Iterable[int]] = _list_pids,
        identify: Callable[[int], Identity | None] | None = None,
        usage: Callable[[int], Usage | None] = read_usage,
        clock: Clock = time.monotonic,
        cpus: int | None = None,
    ) -> None:
        self._specs = [parse_spec(s) for s in specs]
        if identify is None:
            need = cmdline_needed(self._specs)
            identify = (
                functools.partial(read_identity_proc, need_cmdline=need) if PROC else read_identity
            )
        self._scanner = ProcessScanner(self._specs, pids=pids, identify=identify)
        self._usage, self._clock = usage, clock
        self._cpus = cpus if cpus is not None else (os.cpu_count() or 1)
        self._restarts = {s.label: RestartState() for s in self._specs}
        self._cpu: dict[str, dict[Ident, float]] = {}
        self._last_t: float | None = None

    def collect(self) -> dict[str, float]:
        """Current figures of every spec (nothing when no spec is configured)."""
        if not self._specs:
            return {}
        matched = self._scanner.scan()
        now = self._clock()
        elapsed = 0.0 if self._last_t is None else now - self._last_t
        self._last_t = now
        out: dict[str, float] = {}
        for label, procs in matched.items():
            out.update(self._one(label, procs, elapsed))
        return out

    def _one(
        self, label: str, procs: list[tuple[int, Identity]], elapsed: float
    ) -> dict[str, float]:
        idents = frozenset((pid, ident.create_time) for pid, ident in procs)
        state = self._restarts[label] = step_restarts(self._restarts[label], idents)
        cpu: dict[Ident, float] = {}
        rss = 0
        for pid, ident in procs[:MAX_USAGE_READS]:
            use = self._usage(pid)
            if use is not None:
                cpu[(pid, ident.create_time)] = use.cpu_s
                rss += use.rss
        values: dict[str, float | None] = {
            "process.running": float(bool(procs)),
            "process.count": float(len(procs)),
            "process.rss_bytes": float(rss),
            "process.restarts": float(state.restarts),
            "process.cpu_percent": cpu_share(self._cpu.get(label, {}), cpu, elapsed, self._cpus),
        }
        self._cpu[label] = cpu
        return {metric_key(k, label): v for k, v in values.items() if v is not None}
