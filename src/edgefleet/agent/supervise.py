"""The agent's task supervisor: a task that dies stops the whole agent, with a non-zero exit.

Sampling, publishing and the certificate watch run as asyncio tasks. Before, a task that
raised just ended and the agent ran on without it (no new samples, ever, while the process
looked healthy to systemd). Now the first task that dies is logged in one line, the agent
stops as on SIGTERM (the queue is kept), and ``edgefleet agent`` exits with code 1, so
systemd (``Restart=always``) or the Greengrass nucleus starts it again. A failing collector
never gets here: :func:`edgefleet.agent.collectors.collect_all` isolates each one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from edgefleet.common.logs import kv

log = logging.getLogger(__name__)


def _death(task: asyncio.Task[Any]) -> str | None:
    """Why ``task`` (which is done) died, or None if it returned normally."""
    if task.cancelled():
        return f"{task.get_name()} was cancelled"
    exc = task.exception()
    return None if exc is None else f"{task.get_name()} died: {exc!r}"


async def supervise(tasks: list[asyncio.Task[None]], stop: asyncio.Event) -> str | None:
    """Wait until ``stop`` is set or one of ``tasks`` dies; return the death (then ``stop``
    is set too) or None. A task that returns normally (the certificate watch has nothing to
    do under Greengrass) is not a death."""
    stopper = asyncio.create_task(stop.wait(), name="stop")
    waiting: set[asyncio.Task[Any]] = {stopper, *tasks}
    failure: str | None = None
    while not stop.is_set():
        done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is stopper or stop.is_set():
                continue
            failure = _death(task)
            if failure is not None:
                log.error("agent task died; stopping (exit code 1)", extra=kv(reason=failure))
                stop.set()
    stopper.cancel()
    return failure
