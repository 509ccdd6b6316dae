"""Failed systemd units and the state of the units the user lists, read with ``systemctl``.

Two ``systemctl`` calls per refresh (``list-units --failed`` and ``show`` for the listed
units), run in the background at most every ``interval_s`` seconds (default 30) with a 5 s
deadline each; between refreshes the last figures are repeated. Where systemd is not PID 1 (no
``/run/systemd/system``, or systemctl says so) the collector logs that once and reports
nothing from then on; it is not a failure.

Reading (:func:`read_systemd`, any :data:`Runner`, e.g. one that enters a container) is split
from parsing (:func:`parse_failed`, :func:`parse_show`, :func:`systemd_metrics`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.collectors.base import metric_key
from edgefleet.agent.collectors.command import CommandResult, Runner, run_bounded
from edgefleet.agent.collectors.periodic import Refresher
from edgefleet.common.logs import kv

log = logging.getLogger(__name__)

SHOW_PROPERTIES = "Id,LoadState,ActiveState,SubState,NRestarts"
# ActiveState -> systemd.unit_state; 0 for anything else (a unit that does not exist).
STATE_CODES = {
    "active": 1, "reloading": 2, "inactive": 3, "failed": 4, "activating": 5,
    "deactivating": 6, "maintenance": 7, "refreshing": 8,
}  # fmt: skip
ACTIVE_STATES = frozenset({"active", "reloading", "refreshing"})
MAX_FAILED_NAMES = 50
MAX_REMEMBERED = 50
_UNAVAILABLE = ("not been booted with systemd", "Failed to connect to bus", "Host is down")


class SystemdUnavailableError(RuntimeError):
    """systemctl cannot talk to a running systemd here."""


@dataclass(frozen=True, slots=True)
class SystemdText:
    """The raw output of one refresh: the failed-units list and ``show`` of the listed units."""

    failed: str
    show: str


def systemctl_runner(prefix: Sequence[str] = (), timeout_s: float = 5.0) -> Runner:
    """A runner of ``[*prefix, "systemctl", *args]`` (a prefix such as ``nsenter -t PID -a --``)."""
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C"}

    def run(args: Sequence[str]) -> CommandResult:
        argv = [*prefix, "systemctl", *args]
        return run_bounded(argv, timeout_s=timeout_s, max_bytes=1 << 20, env=env)

    return run


def is_systemd_booted() -> bool:
    """True when systemd is the init system (``sd_booted``'s test)."""
    return Path("/run/systemd/system").is_dir()


def _output(result: CommandResult, what: str) -> str:
    error = result.error(what)
    if error is not None:
        if any(marker in error for marker in _UNAVAILABLE):
            raise SystemdUnavailableError(error)
        raise RuntimeError(error)
    return result.stdout.decode("utf-8", "replace")


def read_systemd(run: Runner, units: Sequence[str]) -> SystemdText:
    """Run the two systemctl queries through ``run`` (no ``show`` without listed units)."""
    failed = _output(
        run(["list-units", "--failed", "--plain", "--no-legend", "--no-pager"]), "systemctl"
    )
    show = ""
    if units:
        show = _output(run(["show", "-p", SHOW_PROPERTIES, "--", *units]), "systemctl show")
    return SystemdText(failed, show)


def parse_failed(text: str) -> list[str]:
    """Unit names of ``systemctl list-units --failed`` output (with or without ``--plain``)."""
    names: list[str] = []
    for line in text.splitlines():
        fields = line.lstrip("\u25cf\u00d7* \t").split()
        if fields and "." in fields[0]:
            names.append(fields[0])
    return names


def parse_show(text: str) -> list[dict[str, str]]:
    """The ``Key=value`` blocks of ``systemctl show``, one per unit, in output order."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in [*text.splitlines(), ""]:
        key, sep, value = line.partition("=")
        if sep:
            current[key.strip()] = value.strip()
        elif not line.strip() and current:
            blocks.append(current)
            current = {}
    return blocks


def _unit_metrics(unit: str, props: dict[str, str]) -> dict[str, float]:
    state = props.get("ActiveState", "") if props.get("LoadState") != "not-found" else ""
    out = {
        metric_key("systemd.unit_active", unit): float(state in ACTIVE_STATES),
        metric_key("systemd.unit_state", unit): float(STATE_CODES.get(state, 0)),
    }
    if props.get("NRestarts", "").isdigit():
        out[metric_key("systemd.unit_restarts", unit)] = float(props["NRestarts"])
    return out


def systemd_metrics(
    failed: Sequence[str],
    units: Sequence[str],
    blocks: Sequence[dict[str, str]],
    earlier_failed: Iterable[str] = (),
) -> dict[str, float]:
    """Metrics of one refresh. Units failed earlier but not now get ``unit_failed = 0``."""
    out = {"systemd.failed_units": float(len(failed))}
    for name in earlier_failed:
        out[metric_key("systemd.unit_failed", name)] = 0.0
    for name in sorted(failed)[:MAX_FAILED_NAMES]:
        out[metric_key("systemd.unit_failed", name)] = 1.0
    if len(blocks) == len(units):  # systemctl show answers in argument order
        pairs = zip(units, blocks, strict=True)
    else:
        by_id = {b.get("Id", ""): b for b in blocks}
        pairs = zip(units, (by_id.get(u, {}) for u in units), strict=True)
    for unit, props in pairs:
        out.update(_unit_metrics(unit, props))
    return out


class SystemdCollector:
    """``systemd.failed_units``, ``systemd.unit_failed[unit]`` and the listed units' state."""

    name = "systemd"

    def __init__(
        self,
        *,
        units: Sequence[str] = (),
        interval_s: float = 30.0,
        run: Runner | None = None,
        booted: Callable[[], bool] = is_systemd_booted,
    ) -> None:
        self._units = list(units)
        self._run = systemctl_runner() if run is None else run
        self._seen: SystemdText | None = None
        self._figures: dict[str, float] = {}
        self._earlier: list[str] = []
        self.refresher: Refresher[SystemdText] | None = None
        if not booted():
            self._unavailable("systemd is not the init system here (no /run/systemd/system)")
            return
        self.refresher = Refresher(self._read, period_s=interval_s, name="systemd")
        self.refresher.poll()

    def _read(self) -> SystemdText:
        return read_systemd(self._run, self._units)

    def _unavailable(self, reason: str) -> None:
        self.refresher = None
        log.info("systemd collector idle", extra=kv(reason=reason))

    def collect(self) -> dict[str, float]:
        """Figures of the latest refresh; starts the next one when due."""
        if self.refresher is None:
            return {}
        if isinstance(gone := self.refresher.latest(), SystemdUnavailableError):
            self._unavailable(str(gone))  # checked before poll(): no further systemctl run
            return {}
        outcome = self.refresher.poll()
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is not None and outcome is not self._seen:
            self._seen = outcome
            failed = parse_failed(outcome.failed)
            figures = systemd_metrics(failed, self._units, parse_show(outcome.show), self._earlier)
            self._figures = figures
            names = [k for k in figures if k.startswith("systemd.unit_failed[")]
            self._earlier = [k[len("systemd.unit_failed[") : -1] for k in names][:MAX_REMEMBERED]
        return dict(self._figures)
