"""Seq edges: no schema-valid seq can make storage raise or the loss figure absurd.

Every case runs through :class:`Ingest` AND a real :class:`FleetStore` (SQLite), the way
the backend stores a batch: samples, the cursors that admitted them, device rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.backend.store_backends import fleet_store, on_postgres, schema_url

from edgefleet.backend.ingest.dedup import LOST_CAP, SeqCursor, SeqTracker
from edgefleet.backend.ingest.handler import Ingest
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.pg_store import PgFleetStore
from edgefleet.wire.messages import MAX_SEQ, metrics_topic

DEV, OTHER = "dev-1", "dev-2"
EDGES = [0, 1, 2, 9_999, 10_000, 10_001, 1_000_000, 1_000_001, 1_000_002, 2**31, 2**32,
         MAX_SEQ - 1_000_001, MAX_SEQ - 1, MAX_SEQ]


def payload(seqs: list[int], *, device: str = DEV, stream: str = "a") -> bytes:
    return json.dumps({
        "v": 1, "device_id": device, "stream": stream, "sent_at": 1000.0,
        "samples": [{"seq": s, "ts": 1000.0 + i, "metrics": {"cpu.percent": 1.0}}
                    for i, s in enumerate(seqs)],
    }).encode()


class Pipeline:
    """Ingest + store, one transaction per message, as the backend's ingest loop does."""

    def __init__(self, path: Path, url: str | None = None, **ingest: Any) -> None:
        self.path, self.url, self.opts = path, url, ingest
        self.store = PgFleetStore(url) if url else fleet_store(path)
        self.ingest = Ingest(**ingest)
        self.ingest.restore(self.store.cursors())
        self.stored = 0

    def send(self, seqs: list[int], *, device: str = DEV, stream: str = "a") -> list[int]:
        result = self.ingest.handle(metrics_topic(device), payload(seqs, device=device,
                                                                   stream=stream), now=1.0)
        self.stored += self.store.add_samples(result.samples, cursors=self.ingest.take_cursors())
        return [s.seq for s in result.samples]

    def reopen(self) -> None:
        self.store.close()
        self.__init__(self.path, self.url, **self.opts)  # type: ignore[misc]

    def stored_lost(self, device: str = DEV) -> int:
        row = {r.device: r for r in self.store.devices()}.get(device)
        assert row is not None
        return row.lost_samples


@pytest.fixture
def pipe(tmp_path: Path) -> Iterator[Pipeline]:
    opened = Pipeline(tmp_path / "fleet.db")
    yield opened
    opened.store.close()


def test_the_reported_five_samples_no_longer_stop_the_fleet(pipe: Pipeline) -> None:
    """Seq 0 and the largest seq on two streams: once 2^63-1 broke every later store."""
    for stream in ("a", "b"):
        assert pipe.send([0], stream=stream) == [0]
        assert pipe.send([MAX_SEQ], stream=stream) == [MAX_SEQ]
    assert pipe.send([0], stream="c") == [0]
    assert pipe.send([0, 1, 2], device=OTHER) == [0, 1, 2]  # the rest of the fleet flows on
    assert pipe.ingest.lost(DEV) == pipe.stored_lost() == 0
    counters = pipe.ingest.counters()
    assert (counters.lost_samples, counters.anomalies_total["seq_jump"]) == (0, 2)
    assert pipe.stored == 8


@pytest.mark.parametrize("seq", [2**53, 2**63 - 1, 2**64])
def test_a_seq_beyond_the_wire_bound_is_refused_with_a_reason(pipe: Pipeline, seq: int) -> None:
    assert pipe.send([seq]) == []
    counters = pipe.ingest.counters()
    assert counters.rejected_total["malformed"] == 1
    assert pipe.send([0, 1], device=OTHER) == [0, 1]


def test_a_jump_is_a_counted_epoch_not_loss(pipe: Pipeline) -> None:
    assert pipe.send(list(range(10))) == list(range(10))
    assert pipe.send([10_000_000, 10_000_001]) == [10_000_000, 10_000_001]
    assert pipe.ingest.lost(DEV) == 0
    # the device goes on where it was (the jump was a glitch): data flows, not "replays"
    assert pipe.send([10, 11]) == [10, 11]
    assert pipe.send([11]) == []  # a duplicate within the epoch is still one
    counters = pipe.ingest.counters()
    assert counters.anomalies_total["seq_jump"] == 2
    assert (counters.lost_samples, pipe.stored_lost()) == (0, 0)
    assert pipe.ingest.sequence(DEV) == {
        "stream": "a", "first_seq": 10, "last_seq": 11, "received": 2, "lost": 0}


def test_gaps_within_the_jump_bound_stay_lost_samples(pipe: Pipeline) -> None:
    pipe.send([0])
    pipe.send([1_000_000])  # exactly the bound: a gap, counted as lost
    assert pipe.ingest.lost(DEV) == pipe.stored_lost() == 999_999
    pipe.send([2_000_002])  # one beyond: a new epoch, the earlier loss is kept
    assert pipe.ingest.lost(DEV) == pipe.stored_lost() == 999_999
    assert pipe.ingest.counters().anomalies_total["seq_jump"] == 1


def test_the_jump_bound_is_a_setting(tmp_path: Path) -> None:
    pipe = Pipeline(tmp_path / "f.db", max_seq_jump=20_000)
    pipe.send([0])
    pipe.send([20_001])
    assert (pipe.ingest.lost(DEV), pipe.ingest.counters().anomalies_total["seq_jump"]) == (0, 1)
    with pytest.raises(ValueError, match="jump"):
        Ingest(window=10_000, max_seq_jump=9_999)
    pipe.store.close()


def test_state_survives_a_restart_at_the_edges(pipe: Pipeline) -> None:
    pipe.send([MAX_SEQ - 5, MAX_SEQ])
    pipe.send([0], stream="b")
    pipe.send([3, MAX_SEQ], stream="b")
    before = (pipe.ingest.lost(DEV), pipe.ingest.sequence(DEV))
    pipe.reopen()
    assert (pipe.ingest.lost(DEV), pipe.ingest.sequence(DEV)) == before
    assert pipe.stored_lost() == before[0] == 4 + 2  # 4 of stream a, 1 and 2 of stream b
    assert pipe.send([MAX_SEQ], stream="b") == []  # the epoch that began at MAX_SEQ
    assert pipe.send([MAX_SEQ - 1], stream="b") == [MAX_SEQ - 1]
    assert pipe.send([7], stream="a") == []  # a retired stream stays retired
    assert pipe.ingest.lost(DEV) == pipe.stored_lost() == 6


def test_a_cursor_saved_by_an_older_backend_recovers(tmp_path: Path) -> None:
    """A cursor at 2^63-1 (possible before the wire bound) neither overflows nor blocks."""
    store = fleet_store(tmp_path / "f.db")
    store.add_samples([AcceptedSample(DEV, 2**63 - 1, 1.0, {})], cursors={
        DEV: SeqCursor("a", 0, 2**63 - 1, 2, holes=0, lost_prior=2**64)})
    (row,) = store.devices()
    assert row.device == DEV and row.lost_samples == LOST_CAP
    ingest = Ingest()
    ingest.restore(store.cursors())
    result = ingest.handle(metrics_topic(DEV), payload([5, 6]), now=1.0)
    assert [s.seq for s in result.samples] == [5, 6]  # a new epoch, not old replays
    store.add_samples(result.samples, cursors=ingest.take_cursors())
    assert ingest.lost(DEV) == LOST_CAP
    store.close()


_seqs = st.one_of(st.sampled_from(EDGES), st.integers(0, MAX_SEQ))
_messages = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.lists(_seqs, min_size=1, max_size=4)),
    min_size=1, max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=_messages)
def test_any_valid_seqs_store_and_keep_the_loss_sane(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
    messages: list[tuple[str, list[int]]],
) -> None:
    # every example on an empty store: a new file, or a new schema of the test's PostgreSQL
    url = schema_url(request.getfixturevalue("postgres")) if on_postgres() else None
    pipe = Pipeline(tmp_path_factory.mktemp("p") / "fleet.db", url)
    jump = 1_000_000
    for stream, seqs in messages:
        pipe.send(seqs, stream=stream)  # never raises
        pipe.send([0, 1], device=OTHER, stream=stream)
    lost = pipe.ingest.lost(DEV)
    # each message adds at most its gaps below the jump bound; nothing near 10^15
    assert 0 <= lost <= jump * sum(len(s) for _, s in messages)
    assert pipe.stored_lost() == lost
    assert pipe.ingest.counters().lost_samples == lost + pipe.ingest.lost(OTHER)
    pipe.reopen()
    assert pipe.ingest.lost(DEV) == lost
    pipe.store.close()


def test_the_loss_figure_is_capped() -> None:
    tracker = SeqTracker("s", window=10, jump=10)
    for stream in range(3000):
        tracker.restart(str(stream))
        tracker.lost_prior = LOST_CAP - 1  # as after many lossy streams
        tracker.accept(0)
        tracker.accept(10)
    assert tracker.lost == tracker.cursor().lost == LOST_CAP
