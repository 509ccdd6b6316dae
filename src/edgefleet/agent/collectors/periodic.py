"""A job (a command, a slow read) run in the background, at most once per period.

A collector asks :meth:`Refresher.poll` every round: it starts the job in a daemon thread when
none is running and the period has passed, and returns the latest *finished* outcome at once.
So a slow or hung job never delays a sample; its figures arrive one round later. A run that
never ends (the job is expected to bound itself, e.g. with :func:`run_bounded`) only stops
further runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from edgefleet.agent.collectors.base import Clock

T = TypeVar("T")


class Refresher(Generic[T]):
    """Runs ``job()`` in the background at most every ``period_s`` seconds."""

    def __init__(
        self, job: Callable[[], T], *, period_s: float, name: str, clock: Clock = time.monotonic
    ) -> None:
        self._job, self._period, self._name, self._clock = job, period_s, name, clock
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._outcome: T | Exception | None = None
        self._started_at: float | None = None

    def poll(self) -> T | Exception | None:
        """The latest finished outcome (``None`` before the first); starts a run if one is due."""
        now = self._clock()
        due = self._started_at is None or now - self._started_at >= self._period
        if due and self._idle.is_set():
            self._idle.clear()
            self._started_at = now
            threading.Thread(target=self._run, name=f"edgefleet-{self._name}", daemon=True).start()
        with self._lock:
            return self._outcome

    def latest(self) -> T | Exception | None:
        """The latest finished outcome, without starting a run."""
        with self._lock:
            return self._outcome

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no run is in flight; True if so within ``timeout_s`` (for tests, --once)."""
        return self._idle.wait(timeout_s)

    def _run(self) -> None:
        try:
            outcome: T | Exception = self._job()
        except Exception as exc:  # noqa: BLE001 - handed to the collector as this run's outcome
            outcome = exc
        with self._lock:
            self._outcome = outcome
        self._idle.set()
