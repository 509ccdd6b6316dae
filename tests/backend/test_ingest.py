"""Ingest: rejects counted by reason, duplicates dropped, gaps counted and healed, resets."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from edgefleet.backend.ingest.dedup import SeqTracker
from edgefleet.backend.ingest.handler import Ingest
from edgefleet.wire.messages import MAX_MESSAGE_BYTES, metrics_topic, status_topic

DEV = "dev-1"
TOPIC = metrics_topic(DEV)


def payload(
    seqs: list[int], *, device: str = DEV, stream: str = "s1", dropped: int = 0,
    sent_at: float = 1000.0, **extra: Any,
) -> bytes:
    doc: dict[str, Any] = {
        "v": 1, "device_id": device, "stream": stream, "sent_at": sent_at,
        "samples": [{"seq": s, "ts": 100.0 + s, "metrics": {"cpu.percent": float(s)}}
                    for s in seqs],
        "health": {"queue_depth": 0, "queue_bytes": 0, "oldest_age_s": 0.0,
                   "dropped_total": dropped, "publish_errors_total": 0, "rss_bytes": 1,
                   "agent_version": "0.1.0"},
    }
    doc.update(extra)
    return json.dumps(doc).encode()


def accepted(ingest: Ingest, seqs: list[int], **kw: Any) -> list[int]:
    result = ingest.handle(TOPIC, payload(seqs, **kw), now=1000.0)
    return [s.seq for s in result.samples]


# -- rejects -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        (TOPIC, b"{not json", "malformed"),
        (TOPIC, b"[1, 2]", "malformed"),
        (TOPIC, b"[" * 50_000 + b"]" * 50_000, "malformed"),
        (TOPIC, json.dumps({"v": 1, "device_id": DEV}).encode(), "malformed"),
        (TOPIC, b"x" * (MAX_MESSAGE_BYTES + 1), "oversized"),
        (TOPIC, json.dumps({"v": 2}).encode(), "unknown_version"),
        (TOPIC, payload([0], device="dev-2"), "spoofed"),
        ("dt/edgefleet/dev-1/other", payload([0]), "bad_topic"),
        ("dt/other/dev-1/metrics", payload([0]), "bad_topic"),
    ],
)
def test_rejects_are_counted_by_reason(topic: str, body: bytes, reason: str) -> None:
    ingest = Ingest()
    result = ingest.handle(topic, body, now=1.0)
    assert (result.kind, result.reason, result.samples) == ("rejected", reason, ())
    counters = ingest.counters()
    assert counters.rejected_total[reason] == 1
    assert sum(counters.rejected_total.values()) == 1
    assert counters.messages_total == 1


def test_reject_logging_is_rate_limited_per_reason(caplog: pytest.LogCaptureFixture) -> None:
    ingest = Ingest()
    with caplog.at_level(logging.WARNING, logger="edgefleet.backend.ingest.handler"):
        for i in range(50):
            ingest.handle(TOPIC, b"junk", now=float(i) / 10)  # 5 s of junk
            ingest.handle(TOPIC, json.dumps({"v": 9}).encode(), now=float(i) / 10)
        ingest.handle(TOPIC, b"junk", now=10.5)
    lines = [r for r in caplog.records if r.getMessage() == "message rejected"]
    assert [r.fields["reason"] for r in lines] == ["malformed", "unknown_version", "malformed"]  # type: ignore[attr-defined]
    assert lines[-1].fields["suppressed"] == 49  # type: ignore[attr-defined]
    assert ingest.counters().rejected_total == {
        "malformed": 51, "oversized": 0, "unknown_version": 50, "spoofed": 0, "bad_topic": 0,
    }


def test_status_messages_pass_through() -> None:
    ingest = Ingest()
    body = json.dumps({"v": 1, "device_id": DEV, "state": "offline", "ts": 5.0}).encode()
    result = ingest.handle(status_topic(DEV), body, now=1.0)
    assert result.kind == "status"
    assert result.device == DEV
    assert result.status is not None
    assert result.status.state == "offline"


# -- duplicates ----------------------------------------------------------------------------


def test_same_message_twice_is_one_set_of_samples() -> None:
    ingest = Ingest()
    assert accepted(ingest, [0, 1, 2]) == [0, 1, 2]
    result = ingest.handle(TOPIC, payload([0, 1, 2]), now=1.0)
    assert (result.samples, result.duplicates) == ((), 3)
    counters = ingest.counters()
    assert (counters.samples_total, counters.duplicates_total, counters.lost_samples) == (3, 3, 0)


def test_replayed_batch_after_agent_crash_only_adds_new_samples() -> None:
    ingest = Ingest()
    for start in range(0, 100, 5):
        assert accepted(ingest, list(range(start, start + 5))) == list(range(start, start + 5))
    # the agent crashed before it removed 80..99 from its queue: it sends them again, then more
    assert accepted(ingest, list(range(80, 110))) == list(range(100, 110))
    assert ingest.counters().duplicates_total == 20
    assert ingest.lost(DEV) == 0


def test_out_of_order_arrivals_are_kept_once_and_gaps_heal() -> None:
    ingest = Ingest()
    assert accepted(ingest, [0, 1, 2]) == [0, 1, 2]
    assert accepted(ingest, [6, 7]) == [6, 7]
    assert ingest.lost(DEV) == 3  # 3, 4, 5 are missing for now
    assert ingest.counters().lost_samples == 3
    assert accepted(ingest, [4, 3]) == [4, 3]
    assert ingest.lost(DEV) == 1
    assert accepted(ingest, [3, 4, 5, 6]) == [5]
    assert ingest.lost(DEV) == 0
    counters = ingest.counters()
    assert (counters.samples_total, counters.duplicates_total, counters.lost_samples) == (8, 3, 0)


def test_samples_below_the_first_seen_fill_in_once() -> None:
    ingest = Ingest()
    assert accepted(ingest, [50, 51]) == [50, 51]
    assert ingest.lost(DEV) == 0  # nothing before the first seq is known to be lost
    assert accepted(ingest, [48]) == [48]
    assert ingest.lost(DEV) == 1  # 49
    assert accepted(ingest, [48, 49]) == [49]
    assert ingest.lost(DEV) == 0


def test_gap_that_never_fills_stays_lost() -> None:
    ingest = Ingest()
    accepted(ingest, [0])
    accepted(ingest, [10])
    for seq in range(11, 500):
        accepted(ingest, [seq])
    assert ingest.lost(DEV) == 9
    assert ingest.counters().lost_samples == 9


def test_seqs_older_than_the_window_are_dropped_as_duplicates() -> None:
    ingest = Ingest(window=100)
    accepted(ingest, [0])
    accepted(ingest, [5])
    accepted(ingest, list(range(6, 300)))
    assert accepted(ingest, [3]) == []  # 297 below the newest: cannot tell it from a replay
    assert ingest.lost(DEV) == 4
    assert accepted(ingest, [250]) == []  # inside the window and already here
    assert ingest.counters().duplicates_total == 2


def test_devices_are_tracked_separately() -> None:
    ingest = Ingest()
    assert accepted(ingest, [0, 1]) == [0, 1]
    body = payload([0, 1], device="dev-2")
    result = ingest.handle(metrics_topic("dev-2"), body, now=1.0)
    assert [s.seq for s in result.samples] == [0, 1]
    assert {s.device for s in result.samples} == {"dev-2"}


# -- streams -------------------------------------------------------------------------------


def test_new_stream_resets_tracking_and_old_stream_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest = Ingest()
    accepted(ingest, [0, 1, 2, 5], stream="old")  # 3, 4 missing
    with caplog.at_level(logging.INFO, logger="edgefleet.backend.ingest.handler"):
        result = ingest.handle(TOPIC, payload([0, 1], stream="new"), now=1.0)
    assert result.stream_reset
    assert [s.seq for s in result.samples] == [0, 1]
    assert "device started a new sequence stream" in caplog.text
    assert ingest.lost(DEV) == 2  # the old stream's loss is kept
    late = ingest.handle(TOPIC, payload([3, 4, 6], stream="old"), now=1.0)
    assert (late.samples, late.duplicates, late.refused) == ((), 0, 3)
    assert accepted(ingest, [1, 2], stream="new") == [2]
    counters = ingest.counters()
    assert (counters.stream_resets_total, counters.lost_samples) == (1, 2)
    assert counters.refused_samples_total == {"retired_stream": 3}
    assert ingest.conflict(DEV) is None  # one late message of the old stream is no conflict


def test_first_stream_of_a_device_is_not_a_reset() -> None:
    ingest = Ingest()
    result = ingest.handle(TOPIC, payload([7]), now=1.0)
    assert not result.stream_reset
    assert ingest.counters().stream_resets_total == 0


# -- health --------------------------------------------------------------------------------


def test_agent_dropped_follows_the_newest_report() -> None:
    ingest = Ingest()
    ingest.handle(TOPIC, payload([0], dropped=3, sent_at=10.0), now=1.0)
    ingest.handle(metrics_topic("dev-2"), payload([0], device="dev-2", dropped=4), now=1.0)
    ingest.handle(TOPIC, payload([1], dropped=5, sent_at=20.0), now=1.0)
    result = ingest.handle(TOPIC, payload([2], dropped=1, sent_at=15.0), now=1.0)  # late
    assert result.health is not None
    assert result.health.dropped_total == 1  # passed on as it came; the fleet orders it
    assert ingest.counters().agent_dropped == 9


# -- persistence of the dedup state ---------------------------------------------------------


def test_saved_cursors_restore_keeps_duplicates_and_gaps() -> None:
    ingest = Ingest()
    accepted(ingest, [0, 1, 2, 4, 7])
    accepted(ingest, [0], stream="s2")
    accepted(ingest, [1, 3], stream="s2")
    again = Ingest()
    again.restore(ingest.take_cursors())  # what the store saves
    assert again.lost(DEV) == ingest.lost(DEV) == 4  # 3, 5, 6 of s1 and 2 of s2
    assert again.counters().lost_samples == 4
    assert accepted(again, [0, 1, 3], stream="s2") == []
    assert accepted(again, [2], stream="s2") == [2]
    assert accepted(again, [5], stream="s1") == []  # retired stream
    assert again.counters().lost_samples == 3


def test_take_cursors_returns_only_changed_devices() -> None:
    ingest = Ingest()
    accepted(ingest, [0, 1])
    assert set(ingest.take_cursors()) == {DEV}
    assert ingest.take_cursors() == {}
    accepted(ingest, [1])  # only a duplicate: nothing changed
    assert ingest.take_cursors() == {}
    accepted(ingest, [3])
    cursor = ingest.take_cursors()[DEV]
    assert (cursor.stream, cursor.base, cursor.high, cursor.received, cursor.lost) == (
        "s1", 0, 3, 3, 1)
    assert cursor.holes == 0b10  # seq 2 = high - 1 is missing


def test_tracker_round_trip_through_a_cursor_over_a_long_window() -> None:
    tracker = SeqTracker("s", window=64)
    for seq in [*range(0, 100), *range(101, 150), 152, 200]:
        assert tracker.accept(seq)
    again = SeqTracker.from_cursor(tracker.cursor(), window=64)
    for seq in range(130, 201):
        assert again.accept(seq) is tracker.accept(seq), seq
    assert again.lost == tracker.lost
    assert again.cursor() == tracker.cursor()


def test_a_huge_seq_jump_does_not_blow_up_memory() -> None:
    tracker = SeqTracker("s", window=10_000)
    tracker.accept(0)
    assert tracker.accept(2**62)
    assert tracker.bits == 1
    assert (tracker.lost, tracker.jumps) == (0, 1)  # a new epoch, not 2^62 lost samples
