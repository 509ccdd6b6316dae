"""The sampling rounds' thread: results and errors come back, one thread, stop is not stuck."""

from __future__ import annotations

import asyncio
import threading

import pytest

from edgefleet.agent.collect_thread import CollectThread


async def test_rounds_run_in_one_other_thread_in_order() -> None:
    rounds: CollectThread[tuple[int, str]] = CollectThread()
    seen: list[int] = []

    def job(n: int) -> tuple[int, str]:
        seen.append(n)
        return n, threading.current_thread().name

    results = [await rounds.run(lambda n=n: job(n)) for n in range(3)]  # type: ignore[misc]
    assert [n for n, _ in results] == seen == [0, 1, 2]
    names = {name for _, name in results}
    assert names == {"edgefleet-collect"}  # one thread, reused, not the loop's
    assert threading.current_thread().name not in names


async def test_an_exception_reaches_the_caller_and_the_thread_goes_on() -> None:
    rounds: CollectThread[int] = CollectThread()

    def broken() -> int:
        raise OSError("no /proc")

    with pytest.raises(OSError, match="no /proc"):
        await rounds.run(broken)
    assert await rounds.run(lambda: 7) == 7


async def test_a_cancelled_wait_does_not_block_the_next_round() -> None:
    rounds: CollectThread[int] = CollectThread()
    started, release = threading.Event(), threading.Event()

    def slow_round() -> int:
        started.set()
        return int(release.wait(10))

    slow = asyncio.create_task(rounds.run(slow_round))
    assert await asyncio.to_thread(started.wait, 10)
    slow.cancel()  # the agent stops while a round runs
    with pytest.raises(asyncio.CancelledError):
        await slow
    release.set()
    assert await asyncio.wait_for(rounds.run(lambda: 3), 10) == 3
