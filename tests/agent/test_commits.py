"""The agent's sent-but-uncommitted rules (delivery = backend): samples leave the queue only
on a watermark, are resent when none comes, the window of uncommitted samples is bounded,
a sample the backend keeps refusing is given up, and `auto` switches on the first watermark."""

from __future__ import annotations

import pytest

from edgefleet.agent.commits import Commits, CommitSettings
from edgefleet.agent.queue import MemoryQueue


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(mode: str = "backend", n: int = 10, **kw: object) -> tuple[Commits, MemoryQueue, Clock]:
    queue = MemoryQueue(max_bytes=1 << 20, max_samples=10_000)
    for i in range(n):
        queue.put(float(i), b'{"metrics":{}}')
    clock = Clock()
    settings = CommitSettings(mode=mode, resend_after_s=10, resend_max_s=40, **kw)  # type: ignore[arg-type]
    return Commits(queue, settings, clock=clock), queue, clock


def held(queue: MemoryQueue) -> list[int]:
    return [s.seq for s in queue.peek(max_samples=100, max_bytes=1 << 20)]


def test_samples_leave_only_on_a_watermark_of_the_current_stream() -> None:
    c, q, _ = make()
    c.sent(0, 5)
    assert held(q) == list(range(10))  # a PUBACK deletes nothing
    assert c.uncommitted(q.stats().held_from) == 6
    assert c.on_watermark("another-stream", 9) == 0
    assert c.on_watermark(q.stream, 3) == 4
    assert held(q) == list(range(4, 10))
    assert c.uncommitted(q.stats().held_from) == 2
    assert c.on_watermark(q.stream, 2) == 0  # an older watermark changes nothing


def test_resend_when_no_watermark_comes_with_a_growing_pause() -> None:
    c, q, clock = make()
    c.sent(0, 4)
    clock.now += 9
    assert not c.resend_due()
    clock.now += 1
    assert c.resend_due()
    assert not c.start_resend()  # nobody answered: nothing to give up
    assert not c.resend_due()
    clock.now += 10
    assert not c.resend_due()  # the pause doubled to 20 s
    clock.now += 10
    assert c.resend_due()
    c.start_resend()
    c.on_watermark(q.stream, 4)  # progress: everything committed
    clock.now += 1000
    assert not c.resend_due()  # nothing uncommitted is waiting
    c.sent(5, 6)
    clock.now += 10
    assert c.resend_due()  # and the pause is back to 10 s


def test_the_uncommitted_window_is_bounded() -> None:
    c, q, _ = make(max_uncommitted=5)
    c.sent(0, 3)
    assert not c.window_full(q.stats().held_from)
    c.sent(4, 4)
    assert c.window_full(q.stats().held_from)
    c.on_watermark(q.stream, 1)
    assert not c.window_full(q.stats().held_from)


def test_a_sample_the_backend_keeps_refusing_is_given_up() -> None:
    c, q, clock = make(give_up_after=2)
    c.sent(0, 9)
    c.on_watermark(q.stream, 2)  # 3 never gets in
    for rounds in range(1, 3):
        clock.now += 1000
        assert c.resend_due()
        give_up = c.start_resend()
        c.on_watermark(q.stream, 2)  # the backend answers, still below 3
        assert not give_up, rounds
    clock.now += 1000
    assert c.start_resend()  # two answered rounds without progress
    c.give_up(q.stats().held_from)
    assert held(q) == list(range(4, 10)) and c.undeliverable_total == 1
    assert q.stats().held_from == 4  # the backend now counts 3 as lost


def test_a_silent_backend_is_never_given_up_on() -> None:
    c, _, clock = make(give_up_after=1)
    c.sent(0, 9)
    for _ in range(10):  # a backend down for hours: rounds without any answer
        clock.now += 10_000
        assert c.resend_due()
        assert not c.start_resend()


def test_broker_mode_never_waits_and_auto_waits_once_a_watermark_was_heard() -> None:
    c, _, _ = make("broker")
    c.sent(0, 3)
    assert not c.waiting() and c.uncommitted(0) == 0 and not c.resend_due()
    remembered: list[bool] = []
    queue = MemoryQueue(max_bytes=1 << 20, max_samples=100)
    auto = Commits(queue, CommitSettings(mode="auto"), remember=lambda: remembered.append(True))
    assert not auto.waiting()
    auto.on_watermark(queue.stream, 0)
    assert auto.waiting() and remembered == [True]
    auto.on_watermark(queue.stream, 1)
    assert remembered == [True]  # remembered once
    again = Commits(queue, CommitSettings(mode="auto"), heard_before=True)
    assert again.waiting()


def test_a_new_stream_starts_the_bookkeeping_afresh() -> None:
    c, q, clock = make()
    c.sent(0, 9)
    q._stream = "fresh"  # the store was replaced: its seqs restart at 0
    assert c.on_watermark("fresh", 0) == 1
    clock.now += 1000
    assert not c.resend_due()  # nothing of the new stream was sent yet


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="bad delivery settings"):
        CommitSettings(resend_after_s=10, resend_max_s=5)
