"""Blocking calls with a deadline, for system calls that can hang (``statvfs`` on dead NFS).

Calls run in daemon worker threads, so a hung one never blocks the agent's exit. A worker
is reused once its call returned (starting a thread for every call cost more CPU than the
``statvfs`` calls themselves); a hung call keeps its worker. A key whose call overran is
*stuck*: it is not called again (no pile of threads) until that call returns, and meanwhile
it is reported as failed at once.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class CallTimeoutError(TimeoutError):
    """The call did not return within the deadline, or an earlier call is still hung."""


class _Call(Generic[K, T]):
    """One call, run by a worker; ``outcome`` is final once ``done`` is set."""

    def __init__(self, func: Callable[[K], T], key: K) -> None:
        self.done = threading.Event()
        self.outcome: T | Exception = CallTimeoutError(f"call for {key!r} has not returned")
        self._func, self._key = func, key

    def run(self, worker: _Worker) -> None:
        try:
            self.outcome = self._func(self._key)
        except Exception as exc:  # noqa: BLE001 - handed to the caller as the call's outcome
            self.outcome = exc
        finally:
            worker.busy = False  # before done: the caller may hand it the next call at once
            self.done.set()


class _Worker:
    """A daemon thread running the calls handed to it, one at a time."""

    def __init__(self) -> None:
        self.busy = False
        self._todo: queue.SimpleQueue[_Call[object, object]] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="edgefleet-timed", daemon=True).start()

    def start(self, call: _Call[K, T]) -> None:
        self.busy = True
        self._todo.put(call)  # type: ignore[arg-type]

    def _loop(self) -> None:
        while True:
            self._todo.get().run(self)


class TimedCalls(Generic[K, T]):
    """Runs ``func(key)`` for many keys in parallel, waiting at most ``timeout_s`` in all."""

    def __init__(self, func: Callable[[K], T], *, timeout_s: float = 2.0) -> None:
        self._func = func
        self._timeout = timeout_s
        self._stuck: dict[K, _Call[K, T]] = {}
        self._workers: list[_Worker] = []

    @property
    def stuck(self) -> frozenset[K]:
        """Keys whose earlier call overran and has not returned yet."""
        self._reap()
        return frozenset(self._stuck)

    def run_all(self, keys: Iterable[K]) -> dict[K, T | Exception]:
        """Each key's result, or the exception it raised, or a :class:`CallTimeoutError`."""
        self._reap()
        wanted = list(dict.fromkeys(keys))
        calls = {k: self._start(k) for k in wanted if k not in self._stuck}
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

    def _start(self, key: K) -> _Call[K, T]:
        call = _Call(self._func, key)
        worker = next((w for w in self._workers if not w.busy), None)
        if worker is None:  # every worker is busy: with a call of this round, or a hung one
            worker = _Worker()
            self._workers.append(worker)
        worker.start(call)
        return call

    @property
    def threads(self) -> int:
        """Worker threads started so far (hung calls and the widest round need one each)."""
        return len(self._workers)

    def _reap(self) -> None:
        self._stuck = {k: c for k, c in self._stuck.items() if not c.done.is_set()}
