"""Publish answers from the SDK's thread: at once, or held for the loop's next wake-up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from edgefleet.transport.completions import Completions


def _answer_from_another_thread(source: concurrent.futures.Future[int], value: int) -> None:
    thread = threading.Thread(target=source.set_result, args=(value,))
    thread.start()
    thread.join()


async def test_an_answer_reaches_the_loop_at_once_when_not_held() -> None:
    completions = Completions()
    source: concurrent.futures.Future[int] = concurrent.futures.Future()
    dest = completions.wrap(source)
    _answer_from_another_thread(source, 7)
    assert await asyncio.wait_for(dest, 5) == 7


async def test_a_held_answer_waits_for_release_and_then_arrives_with_its_outcome() -> None:
    completions = Completions()
    good: concurrent.futures.Future[int] = concurrent.futures.Future()
    bad: concurrent.futures.Future[int] = concurrent.futures.Future()
    dest_good, dest_bad = completions.wrap(good), completions.wrap(bad)
    completions.hold()
    _answer_from_another_thread(good, 1)
    threading.Thread(target=bad.set_exception, args=(OSError("link down"),)).start()
    # The SDK's callbacks have run (the futures are done), yet nothing woke the loop for them.
    concurrent.futures.wait([good, bad], timeout=5)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not dest_good.done() and not dest_bad.done()
    assert completions.release() == 2
    assert await dest_good == 1
    with pytest.raises(OSError, match="link down"):
        await dest_bad
    assert completions.release() == 0  # released: later answers go straight to the loop
    later: concurrent.futures.Future[int] = concurrent.futures.Future()
    dest_later = completions.wrap(later)
    _answer_from_another_thread(later, 3)
    assert await asyncio.wait_for(dest_later, 5) == 3


async def test_a_held_answer_for_a_cancelled_wait_is_dropped_quietly() -> None:
    completions = Completions()
    source: concurrent.futures.Future[int] = concurrent.futures.Future()
    dest = completions.wrap(source)
    with completions.held():
        dest.cancel()
        _answer_from_another_thread(source, 1)
    assert dest.cancelled()
