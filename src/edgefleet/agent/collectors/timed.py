"""Blocking calls with a deadline, for system calls that can hang (``statvfs`` on dead NFS).

Each call runs in its own daemon thread, so a hung one never blocks the agent's exit. A key
whose call overran is *stuck*: it is not called again (no pile of threads) until that call
returns, and meanwhile it is reported as failed at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class CallTimeoutError(TimeoutError):
    """The call did not return within the deadline, or an earlier call is still hung."""


class _Call(Generic[K, T]):
    """One call in a daemon thread; ``outcome`` is final once ``done`` is set."""

    def __init__(self, func: Callable[[K], T], key: K) -> None:
        self.done = threading.Event()
        self.outcome: T | Exception = CallTimeoutError(f"call for {key!r} has not returned")
        self._func, self._key = func, key
        name = f"edgefleet-timed-{key}"[:64]
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self.outcome = self._func(self._key)
        except Exception as exc:  # noqa: BLE001 - handed to the caller as the call's outcome
            self.outcome = exc
        finally:
            self.done.set()


class TimedCalls(Generic[K, T]):
    """Runs ``func(key)`` for many keys in parallel, waiting at most ``timeout_s`` in all."""

    def __init__(self, func: Callable[[K], T], *, timeout_s: float = 2.0) -> None:
        self._func = func
        self._timeout = timeout_s
        self._stuck: dict[K, _Call[K, T]] = {}

    @property
    def stuck(self) -> frozenset[K]:
        """Keys whose earlier call overran and has not returned yet."""
        self._reap()
        return frozenset(self._stuck)

    def run_all(self, keys: Iterable[K]) -> dict[K, T | Exception]:
        """Each key's result, or the exception it raised, or a :class:`CallTimeoutError`."""
        self._reap()
        wanted = list(dict.fromkeys(keys))
        calls = {k: _Call(self._func, k) for k in wanted if k not in self._stuck}
        deadline = time.monotonic() + self._timeout
        out: dict[K, T | Exception] = {}
        for key in wanted:
            call = calls.get(key)
            if call is None:
                out[key] = CallTimeoutError(f"previous call for {key!r} is still hung")
            elif call.done.wait(max(0.0, deadline - time.monotonic())):
                out[key] = call.outcome
            else:
                self._stuck[key] = call
                out[key] = CallTimeoutError(f"no answer for {key!r} within {self._timeout:g} s")
        return out

    def _reap(self) -> None:
        self._stuck = {k: c for k, c in self._stuck.items() if not c.done.is_set()}
