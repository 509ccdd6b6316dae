"""Cardinality bounds per device: keys, instances per family, streams remembered."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from edgefleet.backend.ingest.handler import Ingest
from edgefleet.backend.ingest.keys import KeyBounds, KeyBudget, family_of
from edgefleet.backend.settings import BackendSettings
from edgefleet.wire.messages import metrics_topic

DEV, GOOD = "dev-1", "good-1"
AGENT_KEYS = {**{f"cpu.core_percent[{i}]": 1.0 for i in range(8)},
              **{f"disk.used_percent[/mnt/{i}]": 2.0 for i in range(4)},
              **{f"net.rx_bytes_per_s[eth{i}]": 3.0 for i in range(4)},
              **{f"m.family{i}": 4.0 for i in range(30)}}  # 46 keys, like a real agent


def payload(metrics: dict[str, float], seq: int, *, device: str = DEV, stream: str = "s") -> bytes:
    return json.dumps({
        "v": 1, "device_id": device, "stream": stream, "sent_at": 1.0,
        "samples": [{"seq": seq, "ts": 1.0 + seq, "metrics": metrics}],
    }).encode()


def send(ingest: Ingest, metrics: dict[str, float], seq: int, *, device: str = DEV,
         now: float = 1.0, stream: str = "s") -> dict[str, float]:
    result = ingest.handle(metrics_topic(device), payload(metrics, seq, device=device,
                                                          stream=stream), now=now)
    assert result.kind == "metrics", result.reason
    return dict(result.samples[0].metrics) if result.samples else {}


def invented(start: int, count: int) -> dict[str, float]:
    return {f"disk.used_percent[/x/{i}]": 1.0 for i in range(start, start + count)}


def test_a_real_agent_is_far_inside_the_defaults() -> None:
    ingest = Ingest()
    for seq in range(20):
        assert send(ingest, AGENT_KEYS, seq) == AGENT_KEYS
    assert ingest.counters().refused_keys_total == {"cardinality": 0}


def test_instances_beyond_the_family_bound_are_refused_and_the_rest_is_kept() -> None:
    ingest = Ingest(max_instances=200)
    stored = send(ingest, {**AGENT_KEYS, **invented(0, 250)}, 0)
    assert all(key in stored for key in AGENT_KEYS)  # the known families still get through
    assert sum(key.startswith("disk.used_percent[/x/") for key in stored) == 200 - 4
    assert ingest.counters().refused_keys_total == {"cardinality": 250 - 196}
    # the admitted names stay admitted; only new names beyond the bound are refused
    again = send(ingest, {**AGENT_KEYS, **invented(0, 10), "disk.used_percent[/new]": 1.0}, 1)
    assert len(again) == len(AGENT_KEYS) + 10
    assert send(ingest, {"cpu.core_percent[9]": 1.0}, 2) == {"cpu.core_percent[9]": 1.0}


def test_keys_beyond_the_device_bound_are_refused() -> None:
    ingest = Ingest(max_keys=50, max_instances=1000)
    first = send(ingest, AGENT_KEYS, 0)
    assert len(first) == 46
    more = {f"x.k{i}": 1.0 for i in range(10)}
    assert send(ingest, {**AGENT_KEYS, **more}, 1) == {**AGENT_KEYS, **dict(list(more.items())[:4])}
    assert ingest.counters().refused_keys_total["cardinality"] == 6


def test_a_device_inventing_100k_names_stays_bounded_and_hurts_no_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ingest = Ingest()
    with caplog.at_level(logging.WARNING, logger="edgefleet.backend.ingest.handler"):
        for seq in range(50):  # 50 messages x 2,000 new names = 10^5 names
            stored = send(ingest, {"cpu.percent": 1.0, **invented(seq * 2000, 2000)}, seq,
                          now=1.0 + seq)
            assert stored["cpu.percent"] == 1.0
            assert send(ingest, AGENT_KEYS, seq, device=GOOD, now=1.0 + seq) == AGENT_KEYS
    budget = ingest._keys[DEV]  # white box: what ingest holds for the device
    assert len(budget.current) + len(budget.previous) == budget.count == 201
    assert budget.instances == {"disk.used_percent": 200}
    assert ingest.counters().refused_keys_total["cardinality"] == 100_000 - 200
    warnings = [r for r in caplog.records if "refused" in r.getMessage()]
    assert [r.fields["device"] for r in warnings] == [DEV]  # type: ignore[attr-defined]


def test_many_families_hit_the_device_bound_not_memory() -> None:
    ingest = Ingest(max_keys=1000)
    for seq in range(30):
        names = {f"f{seq}x{i}.v": 1.0 for i in range(1000)}
        send(ingest, names, seq)
    budget = ingest._keys[DEV]
    assert budget.count == len(budget.current) == 1000
    assert budget.instances == {}


def test_names_not_seen_for_a_while_are_forgotten() -> None:
    ingest = Ingest(max_keys=100, forget_keys_s=3600.0)
    send(ingest, {f"old.k{i}": 1.0 for i in range(100)}, 0, now=0.0)
    assert send(ingest, {"new.k": 1.0}, 1, now=10.0) == {}  # at the bound
    send(ingest, {"old.k0": 1.0}, 2, now=3601.0)  # a new generation: old.k0 seen again
    assert send(ingest, {"new.k": 1.0}, 3, now=3602.0) == {}  # the rest is still known
    send(ingest, {"old.k0": 1.0}, 4, now=7300.0)  # two generations: the rest is forgotten
    assert send(ingest, {"new.k": 1.0}, 5, now=7301.0) == {"new.k": 1.0}
    budget = ingest._keys[DEV]
    assert budget.current == {"old.k0", "new.k"}


def test_streams_remembered_per_device_are_bounded() -> None:
    ingest = Ingest(max_streams=8)
    for n in range(1000):
        send(ingest, {"cpu.percent": 1.0}, 0, stream=f"stream-{n}")
    cursor = ingest.take_cursors()[DEV]
    assert cursor.retired == tuple(f"stream-{n}" for n in range(992, 999))
    assert ingest.counters().stream_resets_total == 999
    # a stream forgotten long ago counts as a new one, not as a retired one
    assert send(ingest, {"cpu.percent": 1.0}, 0, stream="stream-0") == {"cpu.percent": 1.0}


def test_family_of() -> None:
    assert family_of("disk.used_percent[/mnt/x]") == "disk.used_percent"
    assert family_of("cpu.percent") is None


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        KeyBounds(max_keys=0)
    budget = KeyBudget(KeyBounds(max_keys=1), now=0.0)
    metrics = {"a.b": 1.0}
    assert budget.admit(metrics) is metrics  # nothing refused: no copy


def test_the_bounds_are_backend_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = BackendSettings()
    assert (defaults.max_keys_per_device, defaults.max_instances_per_family,
            defaults.max_streams_per_device, defaults.max_seq_jump) == (1000, 200, 8, 1_000_000)
    monkeypatch.setenv("EDGE_BACKEND_MAX_INSTANCES_PER_FAMILY", "3")
    s = BackendSettings()
    ingest = Ingest(max_keys=s.max_keys_per_device, max_instances=s.max_instances_per_family,
                    max_streams=s.max_streams_per_device, max_seq_jump=s.max_seq_jump)
    assert len(send(ingest, invented(0, 5), 0)) == 3
    monkeypatch.setenv("EDGE_BACKEND_MAX_KEYS_PER_DEVICE", "0")
    with pytest.raises(ValidationError, match="max_keys_per_device"):
        BackendSettings()
