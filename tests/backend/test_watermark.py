"""Backend acknowledgements: the commit watermark a device may delete up to, when it is
sent (coalesced, after the store commits, never covering an unstored sample) and that only
agents which wait for it get one."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.backend.store_backends import store_class

from backend.test_service import Start, start, until  # noqa: F401
from devices import metrics_payload
from edgefleet.backend.ingest.acks import Acker, AckPolicy
from edgefleet.backend.ingest.dedup import SeqTracker
from edgefleet.backend.ingest.handler import Ingest
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.errors import ProtocolError, TransportError
from edgefleet.wire.base import decode_ack, encode_ack
from edgefleet.wire.messages import AckMessage, encode, metrics_topic

T = 1_700_000_000.0


def tracker(seqs: Sequence[int], held_from: int | None = 0, window: int = 100) -> SeqTracker:
    t = SeqTracker("s", window=window, jump=1000)
    for seq in seqs:
        t.accept(seq)
    t.held_from = held_from
    return t


# --- what the watermark says -------------------------------------------------------------


def test_watermark_is_the_top_of_the_gap_free_prefix() -> None:
    assert tracker(range(10)).committed_through() == 9
    assert tracker([0, 1, 2, 4, 5]).committed_through() == 2  # 3 may still come
    assert tracker([0, 1, 2, 5, 4, 3]).committed_through() == 5  # it came
    assert tracker([3, 4], held_from=0).committed_through() is None  # 0..2 missing, nothing
    assert tracker([3, 4], held_from=1).committed_through() == 0  # 0 is gone, 1..2 missing


def test_what_the_agent_no_longer_holds_does_not_hold_the_watermark_back() -> None:
    # 3 and 4 never arrived, but the agent holds nothing below 5 (it dropped them): gone
    assert tracker([0, 1, 2, 5, 6], held_from=5).committed_through() == 6
    assert tracker([0, 1, 2, 5, 6], held_from=4).committed_through() == 3  # 3 gone, 4 held
    assert tracker([7, 8], held_from=7).committed_through() == 8
    assert tracker([7, 8], held_from=20).committed_through() == 8  # nothing left to wait on


def test_seqs_too_old_to_be_accepted_count_as_gone() -> None:
    # window 100: with 150 received, seqs below 51 would be refused as replays
    t = tracker([0, *range(10, 151)], held_from=0)
    assert t.committed_through() == 150
    t = tracker([0, *range(10, 120)], held_from=0)
    assert t.committed_through() == 119  # 1..9 could no longer arrive: gone
    t = tracker([0, *range(10, 60), *range(61, 120)], held_from=0)
    assert t.committed_through() == 59  # 60 still could


def test_an_agent_that_does_not_wait_gets_no_watermark() -> None:
    assert tracker(range(5), held_from=None).committed_through() is None
    assert tracker([], held_from=0).committed_through() is None


def test_ingest_takes_held_from_from_messages_of_the_current_stream() -> None:
    ingest = Ingest()
    topic = metrics_topic("dev-1")
    ingest.handle(topic, metrics_payload("dev-1", 0, T, {"x": 1.0}, seqs=[1, 2]), T)
    assert ingest.watermark("dev-1") is None  # an older agent: no held_from
    ingest.handle(topic, metrics_payload("dev-1", 4, T, {"x": 1.0}, held_from=0), T)
    assert ingest.watermark("dev-1") == ("test-stream", 2)
    ingest.handle(topic, metrics_payload("dev-1", 5, T, {"x": 1.0}, held_from=4), T)
    assert ingest.watermark("dev-1") == ("test-stream", 5)  # 3 is gone
    # a new stream starts without a watermark until its own messages say what they hold
    ingest.handle(topic, metrics_payload("dev-1", 0, T, {"x": 1.0}, stream="s2"), T)
    assert ingest.watermark("dev-1") is None
    assert ingest.watermark("dev-unknown") is None


def test_the_wire_form_of_a_watermark() -> None:
    raw = encode_ack("abc", 41)
    assert raw == encode(AckMessage(v=1, stream="abc", through=41))
    assert decode_ack(raw) == ("abc", 41)
    for bad, why in [
        (b"{", "not JSON"), (b"[]", "not a v1 object"),
        (b'{"v":2,"stream":"a","through":1}', "not a v1 object"),
        (b'{"v":true,"stream":"a","through":1}', "not a v1 object"),
        (b'{"v":1,"stream":"","through":1}', "not a stream id"),
        (b'{"v":1,"stream":"a","through":1.0}', "is not a seq"),
        (b'{"v":1,"stream":"a","through":true}', "is not a seq"),
        (b'{"v":1,"stream":"a","through":-1}', "is not a seq"),
        (b'{"v":1,"stream":"a","through":9007199254740992}', "is not a seq"),
    ]:
        with pytest.raises(ProtocolError, match=why):
            decode_ack(bad)


# --- when watermarks go out ----------------------------------------------------------------


class Marks:
    """Watermarks by device, set by the test; publishes recorded."""

    def __init__(self) -> None:
        self.marks: dict[str, tuple[str, int]] = {}
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.fail = 0
        self.now = T  # the clock the acker records its publishes with

    def watermark(self, device: str) -> tuple[str, int] | None:
        return self.marks.get(device)

    async def publish(self, topic: str, payload: bytes) -> int:
        if self.fail:
            self.fail -= 1
            raise TransportError("link down")
        self.sent.append((topic.split("/")[2], json.loads(payload)))
        return 0


@pytest.fixture
async def acker() -> Any:
    marks = Marks()
    a = Acker(marks.watermark, marks.publish, AckPolicy(interval_s=60, every=10,
                                                       min_interval_s=5, rate_per_s=1000),
              clock=lambda: marks.now)
    task = asyncio.create_task(a.run())
    yield a, marks
    task.cancel()


async def test_watermarks_are_coalesced(acker: Any) -> None:
    a, m = acker
    m.marks["d1"] = ("s", 3)
    a.committed({"d1": 0}, T)  # the first one goes out at once
    await until(lambda: len(m.sent) == 1)
    assert m.sent == [("d1", {"v": 1, "stream": "s", "through": 3})]
    for n in range(4, 12):  # 8 more samples within the minute: not yet
        m.marks["d1"] = ("s", n)
        a.committed({"d1": 0}, T + n)
    m.marks["d2"] = ("x", 0)
    a.committed({"d2": 0}, T + 12)  # a later device's first watermark overtakes nothing...
    await until(lambda: len(m.sent) == 2)
    assert m.sent[1][0] == "d2"  # ...and proves d1's pending one was not sent
    m.marks["d1"] = ("s", 13)  # 10 samples since the last one: due
    a.committed({"d1": 0}, T + 13)
    await until(lambda: len(m.sent) == 3)
    assert m.sent[2] == ("d1", {"v": 1, "stream": "s", "through": 13})


async def test_a_quiet_device_hears_within_the_interval(acker: Any) -> None:
    a, m = acker
    m.marks["d1"] = ("s", 0)
    a.committed({"d1": 0}, T)
    await until(lambda: len(m.sent) == 1)  # sent at T
    m.marks["d1"] = ("s", 1)
    a.committed({"d1": 0}, T + 1)  # advanced by one; then the device goes quiet
    a.tick(T + 30)
    assert a.pending == 0
    a.tick(T + 61)
    assert a.pending == 1
    await until(lambda: len(m.sent) == 2)
    assert m.sent[1][1]["through"] == 1


async def test_a_resending_agent_is_told_again_and_a_new_stream_at_once(acker: Any) -> None:
    a, m = acker
    m.marks["d1"] = ("s", 5)
    a.committed({"d1": 0}, T)
    await until(lambda: len(m.sent) == 1)
    last = m.now
    a.committed({"d1": 3}, last + 1)  # duplicates 1 s later: too soon
    m.marks["d2"] = ("x", 0)
    a.committed({"d2": 0}, last + 1)
    await until(lambda: len(m.sent) == 2)
    a.committed({"d1": 3}, last + 6)  # 6 s later: it missed the watermark, tell it again
    await until(lambda: len(m.sent) == 3)
    assert m.sent[2] == ("d1", {"v": 1, "stream": "s", "through": 5})
    m.marks["d1"] = ("s2", 0)
    a.committed({"d1": 0}, last + 7)
    await until(lambda: len(m.sent) == 4)
    assert m.sent[3] == ("d1", {"v": 1, "stream": "s2", "through": 0})


async def test_a_failed_publish_is_retried_with_the_newest_watermark(acker: Any) -> None:
    a, m = acker
    m.fail = 1
    m.marks["d1"] = ("s", 5)
    a.committed({"d1": 0}, T)
    await until(lambda: a.failed_total == 1)
    await until(lambda: len(m.sent) == 1)
    assert m.sent == [("d1", {"v": 1, "stream": "s", "through": 5})]


# --- in the running backend ----------------------------------------------------------------


def acks_of(published: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, int]]]:
    return [(t.split("/")[2], decode_ack(p)) for t, p in published if t.startswith("cmd/")]


async def test_the_backend_acknowledges_only_what_it_stored(
    start: Start, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cls = store_class()
    real = cls.add_samples
    locked = False

    def add_samples(self: FleetStoreContract, samples: Sequence[AcceptedSample],
                    **kw: Any) -> int:
        if locked:
            raise sqlite3.OperationalError("database is locked")
        return real(self, samples, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cls, "add_samples", add_samples)
    r = await start(ack_every=1)
    waiting = metrics_payload("dev-a", 0, T, {"x": 1.0}, held_from=0, seqs=[1, 2])
    old = metrics_payload("dev-old", 0, T, {"x": 1.0})  # an agent that does not wait
    r.t.deliver(metrics_topic("dev-old"), old, ("dev-old", 0))
    r.t.deliver(metrics_topic("dev-a"), waiting, ("dev-a", 0))
    await until(lambda: bool(acks_of(r.t.published)))
    assert acks_of(r.t.published) == [("dev-a", ("test-stream", 2))]
    locked = True
    r.t.deliver(metrics_topic("dev-a"),
                metrics_payload("dev-a", 3, T, {"x": 1.0}, held_from=0), ("dev-a", 3))
    await until(lambda: r.b.writer.failures_total >= 2)
    assert acks_of(r.t.published) == [("dev-a", ("test-stream", 2))]  # 3 is not stored
    locked = False
    await until(lambda: len(acks_of(r.t.published)) == 2)
    assert acks_of(r.t.published)[1] == ("dev-a", ("test-stream", 3))
    assert "dev-old" not in {d for d, _ in acks_of(r.t.published)}
    assert "edgefleet_watermarks_published_total 2" in r.b.view.metrics_text()


async def test_acknowledgements_can_be_turned_off(start: Start) -> None:
    r = await start(acks=False)
    r.t.deliver(metrics_topic("dev-a"),
                metrics_payload("dev-a", 0, T, {"x": 1.0}, held_from=0), ("dev-a", 0))
    r.t.deliver(metrics_topic("dev-b"), metrics_payload("dev-b", 0, T, {"x": 1.0}), ("dev-b", 0))
    await until(lambda: ("dev-b", 0) in r.t.acked)  # both stored and acked at the broker
    assert r.b.acker is None and acks_of(r.t.published) == []
