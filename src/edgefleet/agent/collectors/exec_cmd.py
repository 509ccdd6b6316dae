"""Metrics a command prints in the Prometheus text format (as Telegraf's ``exec`` runs it).

The command runs without a shell, in the background (:class:`Refresher`): at most every
``interval_s`` seconds (0: every sample), never two at once, so a slow command never delays a
sample; its figures appear in the sample after the run ends. A run is killed with its whole
process group after ``timeout_s`` or beyond :data:`MAX_OUTPUT_BYTES` of output. A run that
fails (cannot start, non-zero exit, killed) gives no metrics, only ``exec.status.failed = 1``
and a log line at most once a minute. Keys: ``exec.<name>[labels]`` (see :mod:`promtext`),
``exec.status.{failed,exit_code,errors}``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from edgefleet.agent.collectors.command import CommandResult, run_bounded
from edgefleet.agent.collectors.periodic import Refresher
from edgefleet.agent.collectors.promtext import parse_exposition, prom_metrics
from edgefleet.common.logs import RateLimitedLog, kv

log = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 256 * 1024
PREFIX = "exec"


def exec_metrics(result: CommandResult, max_keys: int) -> tuple[dict[str, float], list[str]]:
    """Metrics of one run and its problems as one-line texts (the run's failure first)."""
    failure = result.error("exec_command")
    if failure is not None:
        out = {"exec.status.failed": 1.0}
        if result.exit_code is not None:
            out["exec.status.exit_code"] = float(result.exit_code)
        return out, [failure]
    parsed = parse_exposition(result.stdout.decode("utf-8", "replace"))
    metrics, refused = prom_metrics(parsed.samples, PREFIX, max_keys)
    problems = [f"output line {line}: {reason}" for line, reason in sorted(parsed.bad + refused)]
    metrics["exec.status.failed"] = 0.0
    metrics["exec.status.exit_code"] = 0.0
    metrics["exec.status.errors"] = float(len(problems))
    return metrics, problems


def start_failure(exc: Exception) -> CommandResult:
    """The result of a command that could not be started (missing, not executable)."""
    return CommandResult(None, b"", f"cannot start: {exc}".encode(), False, False)


class ExecCollector:
    """``exec.<name>[labels]`` from the command's output; nothing without a command."""

    name = "exec"

    def __init__(
        self,
        *,
        argv: Sequence[str],
        timeout_s: float = 5.0,
        interval_s: float = 0.0,
        max_keys: int = 200,
        run: Callable[[Sequence[str]], CommandResult] | None = None,
    ) -> None:
        self._argv = list(argv)
        self._timeout_s, self._max_keys = timeout_s, max_keys
        self._run = run if run is not None else self._run_default
        self._log_limit = RateLimitedLog(60.0)
        self._seen: CommandResult | None = None
        self._figures: dict[str, float] = {}
        self.refresher: Refresher[CommandResult] | None = None
        if self._argv:
            self.refresher = Refresher(self._job, period_s=interval_s, name="exec")
            self.refresher.poll()  # primed: the first sample can already have figures

    def _run_default(self, argv: Sequence[str]) -> CommandResult:
        return run_bounded(argv, timeout_s=self._timeout_s, max_bytes=MAX_OUTPUT_BYTES)

    def _job(self) -> CommandResult:
        try:
            return self._run(self._argv)
        except OSError as exc:
            return start_failure(exc)

    def collect(self) -> dict[str, float]:
        """Figures of the latest finished run; starts the next run when one is due."""
        if self.refresher is None:
            return {}
        outcome = self.refresher.poll()
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is not None and outcome is not self._seen:
            self._seen = outcome
            self._figures, problems = exec_metrics(outcome, self._max_keys)
            if problems:
                self._warn(problems)
        return dict(self._figures)

    def _warn(self, problems: list[str]) -> None:
        suppressed = self._log_limit.allow("exec")
        if suppressed is not None:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            fields = kv(detail=problems[0] + more, suppressed=suppressed)
            log.warning("exec collector problem", extra=fields)
