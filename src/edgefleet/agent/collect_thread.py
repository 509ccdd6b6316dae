"""One long-lived thread that runs the sampling rounds for the event loop.

A round reads files and may wait on a slow ``/proc`` read, so it must not run on the event
loop (the publisher and the MQTT callbacks share it). ``asyncio.to_thread`` would do, but
its executor hand-over (work item, two chained futures, thread-count bookkeeping) cost the
loop more per round than some collectors; here a round is one queue put and one
``call_soon_threadsafe`` back. Rounds run one at a time, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")
_Job = tuple[Callable[[], T], asyncio.AbstractEventLoop, "asyncio.Future[T]"]


class CollectThread(Generic[T]):
    """Runs ``await thread.run(func)`` calls in one daemon thread, started on first use."""

    def __init__(self, name: str = "edgefleet-collect") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job[T]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, func: Callable[[], T]) -> T:
        """``func()`` in the thread; its result or its exception here."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.put((func, loop, done))
        return await done

    def _serve(self) -> None:
        while True:
            func, loop, done = self._jobs.get()
            try:
                result = func()
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                _post(loop, done, _fail, exc)
            else:
                _post(loop, done, _succeed, result)


def _post(
    loop: asyncio.AbstractEventLoop, done: asyncio.Future[T], how: Callable[..., None], value: Any
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
        loop.call_soon_threadsafe(how, done, value)


def _succeed(done: asyncio.Future[T], result: T) -> None:
    if not done.done():  # the awaiting task may have been cancelled (stop)
        done.set_result(result)


def _fail(done: asyncio.Future[T], exc: BaseException) -> None:
    if not done.done():
        done.set_exception(exc)
