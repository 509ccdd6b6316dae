"""The sampling rounds' thread: it keeps the schedule, results and errors reach the event
loop, a new interval applies at once, stop stops it, a stalled loop gets no burst."""

from __future__ import annotations

import asyncio
import threading
import time

from edgefleet.agent.collect_thread import RoundThread, next_round


class Rounds:
    """A RoundThread running ``job`` every ``interval`` s; what reached the loop, and where."""

    def __init__(self, interval: float, job: object = None) -> None:
        self.interval = interval
        self.calls = 0
        self.got: asyncio.Queue[tuple[object, str]] = asyncio.Queue()
        self.job = job
        self.thread = RoundThread(self._run, self._deliver, lambda: self.interval)

    def _run(self) -> str:
        self.calls += 1
        if isinstance(self.job, BaseException):
            raise self.job
        return threading.current_thread().name

    def _deliver(self, result: object) -> None:
        self.got.put_nowait((result, threading.current_thread().name))

    async def next(self) -> tuple[object, str]:
        return await asyncio.wait_for(self.got.get(), 10)


async def test_rounds_run_in_one_other_thread_and_reach_the_loop_in_order() -> None:
    rounds = Rounds(0.01)
    rounds.thread.start(asyncio.get_running_loop())
    try:
        results = [await rounds.next() for _ in range(3)]
    finally:
        rounds.thread.stop()
    loop_thread = threading.current_thread().name
    assert {ran for ran, _ in results} == {"edgefleet-collect"}  # one thread, not the loop's
    assert {delivered for _, delivered in results} == {loop_thread}


async def test_an_exception_reaches_the_loop_and_the_rounds_go_on() -> None:
    rounds = Rounds(0.01, OSError("no /proc"))
    rounds.thread.start(asyncio.get_running_loop())
    try:
        first, second = await rounds.next(), await rounds.next()
    finally:
        rounds.thread.stop()
    assert isinstance(first[0], OSError) and str(first[0]) == "no /proc"
    assert isinstance(second[0], OSError)


async def test_a_new_interval_applies_without_waiting_out_the_old_one() -> None:
    rounds = Rounds(3600.0)
    rounds.thread.start(asyncio.get_running_loop())
    try:
        await rounds.next()  # the first round runs at once; the next is due in an hour
        rounds.interval = 0.01
        rounds.thread.replan()
        await rounds.next()  # within the test's 10 s: counted from the first round
    finally:
        rounds.thread.stop()
    assert rounds.calls == 2


async def test_no_round_starts_after_stop() -> None:
    rounds = Rounds(0.01)
    rounds.thread.start(asyncio.get_running_loop())
    await rounds.next()
    rounds.thread.stop()
    thread = rounds.thread._thread
    assert thread is not None
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()
    calls = rounds.calls
    await asyncio.sleep(0.05)
    assert rounds.calls == calls


async def test_a_stalled_loop_gets_one_result_not_a_burst() -> None:
    rounds = Rounds(0.01)
    rounds.thread.start(asyncio.get_running_loop())
    try:
        await rounds.next()
        before = rounds.calls
        time.sleep(0.3)  # noqa: ASYNC251 - the loop is blocked (on purpose) for 30 intervals
        during = rounds.calls - before
        await rounds.next()
    finally:
        rounds.thread.stop()
    assert during <= 1  # one round ran and waits for the loop; the others were skipped


def test_missed_rounds_are_skipped_not_caught_up() -> None:
    assert next_round(10.0, 1.0, 10.5) == 11.0  # on time
    assert next_round(10.0, 1.0, 13.25) == 14.0  # three missed: the next on the old grid
