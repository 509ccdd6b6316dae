"""One long-lived thread that runs the sampling rounds, each at its time, for the event loop.

A round reads files and may wait on a slow ``/proc`` read, so it must not run on the event
loop (the publisher and the MQTT callbacks share it). The thread keeps the schedule itself.
A round that needs the loop hands its result over with one ``call_soon_threadsafe``; one
that does not (``None``: the agent's round queued and published its sample through the
lane, :mod:`edgefleet.agent.lane`) hands nothing, and the loop sleeps on. Waking an idle
thread costs more CPU than most collectors, so the earlier hand-over (a loop timer, a job
handed to the thread, the result handed back: three wake-ups per round) cost more than the
work it scheduled; now one thread wakes per round.

Rounds never overlap and never burst: a round whose time passed while the previous one ran
(suspend, a slow collector) is skipped, and so is a round while the loop has not yet taken
the previous result (a stalled loop gets at most one result queued).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def next_round(prev: float, interval: float, now: float) -> float:
    """When the round after the one due at ``prev`` is due; missed rounds are skipped."""
    at = prev + interval
    if at < now:  # fell behind (suspend, slow collector): skip, don't burst
        at = now + interval - ((now - at) % interval)
    return at


class RoundThread(Generic[T]):
    """Runs ``func`` in one daemon thread every ``interval()`` seconds (the first round at
    :meth:`start`), handing each result, or the exception it raised, to ``deliver`` on the
    event loop; a result of ``None`` is not handed over (the round needs nothing of the loop).
    :meth:`replan` after a change of interval, :meth:`stop` at the end."""

    def __init__(
        self,
        func: Callable[[], T | None],
        deliver: Callable[[T | BaseException], None],
        interval: Callable[[], float],
        name: str = "edgefleet-collect",
    ) -> None:
        self._func, self._deliver, self._interval = func, deliver, interval
        self._name = name
        self._wake = threading.Lock()  # released: a wake-up is pending (replan, stop)
        self._wake.acquire()
        self._stopped = False
        self._undelivered = False  # a result is on its way to the loop
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the thread; the first round runs at once."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, args=(loop,), name=self._name, daemon=True
            )
            self._thread.start()

    def replan(self) -> None:
        """The interval changed: the next round is due one new interval after the start of
        the last one (or at once if that is past). Any thread."""
        self._poke()

    def stop(self) -> None:
        """No round starts after this; a round that runs still delivers its result."""
        self._stopped = True
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(RuntimeError):  # released already: one wake-up is pending
            self._wake.release()

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        at = started = time.monotonic()
        while not self._stopped:
            delay = at - time.monotonic()
            if delay > 0 and self._wake.acquire(timeout=delay):  # a new interval, or stop
                at = next_round(started, self._interval(), time.monotonic())
                continue
            now = time.monotonic()
            if self._undelivered:  # the loop is behind: no second result waits for it
                at = next_round(at, self._interval(), now)
                continue
            started = now
            result: T | BaseException | None
            try:
                result = self._func()
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop
                result = exc
            at = next_round(at, self._interval(), time.monotonic())
            if result is None:
                continue
            self._undelivered = True
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                loop.call_soon_threadsafe(self._hand_over, result)

    def _hand_over(self, result: T | BaseException) -> None:
        self._undelivered = False
        self._deliver(result)
