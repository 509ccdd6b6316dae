"""The SDK's answers (PUBACKs) handed to the event loop, at once or at its next wake-up.

``asyncio.wrap_future`` wakes the event loop for every answer. For an agent that publishes
one sample a second, that is a second wake-up of an idle loop per sample, and waking a cold
Python loop costs more CPU than handling the answer. While the publisher has nothing to do
but wait for the next sample (:meth:`Completions.held`), answers are kept here instead and
handed over when the loop wakes for something else: the next sample, a watermark, a stop,
or the publisher's own idle timeout (at most a second later). Whenever the publisher is
doing anything else, for example waiting for room in a full in-flight window, answers go
to the loop at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_Pair = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", "concurrent.futures.Future[Any]"]


def _copy(dest: asyncio.Future[Any], source: concurrent.futures.Future[Any]) -> None:
    """``source``'s outcome into ``dest`` (event loop)."""
    if dest.cancelled():
        return
    if source.cancelled():
        dest.cancel()
        return
    exc = source.exception()
    if exc is not None:
        dest.set_exception(exc)
    else:
        dest.set_result(source.result())


@dataclass(frozen=True, slots=True)
class Sent:
    """A publish handed to the SDK: its topic and the SDK's future of its answer."""

    topic: str
    future: concurrent.futures.Future[Any]


class Completions:
    """Wraps SDK futures for the event loop; see the module text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holding = False
        self._held: list[_Pair] = []

    def wrap(self, source: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
        """An asyncio future with ``source``'s outcome (``asyncio.wrap_future``, but held
        while :meth:`held` is in force)."""
        loop = asyncio.get_running_loop()
        dest: asyncio.Future[Any] = loop.create_future()
        source.add_done_callback(lambda done: self._arrived((loop, dest, done)))
        return dest

    def _arrived(self, pair: _Pair) -> None:  # the SDK's thread (or the loop's, if done)
        with self._lock:
            if self._holding:
                self._held.append(pair)
                return
        loop, dest, source = pair
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(_copy, dest, source)

    def hold(self) -> None:
        """Keep answers from waking the loop until :meth:`release` (event loop)."""
        with self._lock:
            self._holding = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """:meth:`hold` within this block, then :meth:`release`."""
        self.hold()
        try:
            yield
        finally:
            self.release()

    def release(self) -> int:
        """Stop holding and hand over what was kept (event loop); how many answers."""
        with self._lock:
            self._holding = False
            held, self._held = self._held, []
        for _, dest, source in held:
            _copy(dest, source)
        return len(held)
