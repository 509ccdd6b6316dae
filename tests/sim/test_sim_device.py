"""One simulated device as a pure state machine, its ground truth, options and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.agent.batch import build_message
from edgefleet.cli import build_parser
from edgefleet.errors import ConfigError
from edgefleet.sim.device import SimDevice, Transition
from edgefleet.sim.options import ScriptedEvent, SimOptions, demo_script, options_from_args
from edgefleet.sim.truth import SeqRanges, Truth, to_ranges, write_atomic
from edgefleet.wire.messages import MetricsMessage, decode, metrics_topic

T0 = 1_800_000_000.0
QUIET = {"spike_rate": 0.0, "dropout_rate": 0.0}


def _device(*events: ScriptedEvent, **opts: object) -> SimDevice:
    options = SimOptions(devices=3, interval_s=1.0, script=events, **{**QUIET, **opts})
    return SimDevice("sim-0001", 0, options, seed=7, t0=T0, stream="abc")


def _tick(dev: SimDevice, ts: float) -> Transition:
    transition = dev.advance(ts)
    dev.take_sample(ts)
    return transition


def test_seqs_are_contiguous_and_a_failed_publish_goes_back_to_the_front() -> None:
    dev = _device()
    for i in range(5):
        _tick(dev, T0 + i)
    first = dev.next_batch()
    assert [s.seq for s in first] == [0, 1, 2, 3, 4]
    assert dev.next_batch() == []  # one message in flight at a time
    dev.failed(first)
    _tick(dev, T0 + 5)
    again = dev.next_batch()
    assert [s.seq for s in again] == [0, 1, 2, 3, 4, 5]
    assert dev.snapshot().pending == [0, 1, 2, 3, 4, 5]
    dev.acked(again)
    truth = dev.snapshot()
    assert truth.acked.ranges() == [[0, 5]] and truth.pending == []
    assert (truth.messages, truth.publish_errors, truth.taken) == (1, 1, 6)


def test_health_reports_the_queue_like_the_agent() -> None:
    dev = _device()
    for i in range(3):
        _tick(dev, T0 + i)
    health = dev.health(T0 + 10)
    assert health.queue_depth == 3 and health.oldest_age_s == pytest.approx(10.0)
    assert health.agent_version == "sim" and health.queue_bytes > 0
    dev.acked(dev.next_batch())
    assert dev.health(T0 + 10).queue_depth == 0 and dev.queue_bytes == 0


def test_a_full_backlog_drops_the_oldest_and_counts_them() -> None:
    dev = _device(backlog_max=10)
    for i in range(25):
        _tick(dev, T0 + i)
    assert [s.seq for s in dev.queue] == list(range(15, 25))
    assert dev.snapshot().dropped.ranges() == [[0, 14]]
    assert dev.health(T0 + 25).dropped_total == 15


def test_messages_follow_the_protocol_and_a_backlog_is_batched_within_128_kib() -> None:
    dev = _device()
    for i in range(400):
        _tick(dev, T0 + i)
    sent_at = T0 + 400
    batches = []
    while batch := dev.next_batch():
        payload = build_message(dev.name, dev.stream, batch, dev.health(sent_at), sent_at)
        assert len(payload) <= 128 * 1024
        msg = decode(metrics_topic(dev.name), payload)
        assert isinstance(msg, MetricsMessage)
        assert msg.stream == "abc" and msg.health and msg.health.agent_version == "sim"
        batches.append([(s.seq, s.ts) for s in msg.samples])
        dev.acked(batch)
    assert len(batches) > 1 and all(len(b) > 1 for b in batches)
    flat = [x for b in batches for x in b]
    assert flat == [(i, T0 + i) for i in range(400)]  # original times, contiguous seqs


def test_a_buffered_dropout_keeps_sampling_and_ends_with_a_return() -> None:
    dev = _device(ScriptedEvent(0, "dropout", 10.0, 5.0, buffered=True))
    transitions = [_tick(dev, T0 + i) for i in range(20)]
    assert transitions[10] is Transition.DROP and transitions[15] is Transition.RETURN
    assert transitions.count(Transition.NONE) == 18
    assert dev.next_seq == 20  # sampled through the dropout
    window = dev.snapshot().offline[0]
    assert (window.start, window.end, window.buffered) == (T0 + 10, T0 + 15, True)


def test_a_power_dropout_takes_no_samples_and_reboots() -> None:
    dev = _device(ScriptedEvent(0, "dropout", 10.0, 5.0, buffered=False))
    for i in range(20):
        _tick(dev, T0 + i)
    assert dev.next_seq == 15  # 5 ticks without samples, seqs still contiguous
    metrics = json.loads(dev.queue[-1].body)["metrics"]
    assert metrics["uptime.seconds"] == pytest.approx(4.0)


def test_scripted_and_random_spikes_are_recorded() -> None:
    dev = _device(ScriptedEvent(0, "spike", 3.0, 10.0, "temp"))
    for i in range(30):
        _tick(dev, T0 + i)
    (spike,) = dev.snapshot().spikes
    assert (spike.kind, spike.start, spike.end) == ("temp", T0 + 3, T0 + 13)
    busy = _device(spike_rate=3600.0, spike_duration_s=5.0)
    for i in range(60):
        _tick(busy, T0 + i)
    assert len(busy.snapshot().spikes) >= 5
    none = _device(dropout_rate=0.0)
    for i in range(600):
        assert _tick(none, T0 + i) is Transition.NONE


def test_random_dropouts_follow_their_rate() -> None:
    dev = _device(dropout_rate=360.0, dropout_duration_s=2.0)  # one every 10 s on average
    transitions = [_tick(dev, T0 + i) for i in range(2000)]
    drops = transitions.count(Transition.DROP)
    assert 100 < drops < 250
    assert abs(drops - transitions.count(Transition.RETURN)) <= 1


def test_pending_seqs_are_written_as_ranges() -> None:
    assert to_ranges([7, 0, 1, 2, 5, 6]) == [[0, 2], [5, 7]]
    assert to_ranges([]) == []


def test_seq_ranges_merge_out_of_order_additions() -> None:
    r = SeqRanges()
    for seq in (5, 1, 3, 2, 4, 9, 0, 3):
        r.add(seq)
    assert r.ranges() == [[0, 5], [9, 9]] and r.count == 7
    assert (r.first, r.last, 9 in r, 7 in r) == (0, 9, True, False)


def test_truth_document_and_atomic_write(tmp_path: Path) -> None:
    dev = _device(ScriptedEvent(0, "spike", 1.0, 100.0, "cpu"))
    for i in range(5):
        _tick(dev, T0 + i)
    dev.acked(dev.next_batch())
    _tick(dev, T0 + 5)
    truth = Truth(started_at=T0, options={"devices": 1}, devices={"sim-0001": dev.snapshot()})
    truth.updated_at = T0 + 6
    path = tmp_path / "sub" / "truth.json"
    write_atomic(path, truth.to_json())
    doc = json.loads(path.read_text())
    entry = doc["devices"]["sim-0001"]
    assert (entry["first_seq"], entry["last_seq"], entry["count"]) == (0, 4, 5)
    assert entry["pending_ranges"] == [[5, 5]] and entry["pending"] == 1
    assert entry["stream"] == "abc"
    assert entry["spikes"][0]["metric"] == "cpu.percent"
    assert entry["spikes"][0]["end"] == T0 + 6  # clipped at the report time
    assert doc["totals"]["count"] == 5 and doc["totals"]["pending"] == 1
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_options_from_the_command_line() -> None:
    args = build_parser().parse_args(
        ["simulate", "--devices", "3", "--rate", "5", "--seed", "1", "--demo",
         "--spike-kinds", "cpu,temp", "--truth", "t.json", "--aws-limits"])
    opts = options_from_args(args)
    assert opts.interval_s == pytest.approx(0.2) and opts.aws_limits and opts.demo
    assert opts.spike_kinds == ("cpu", "temp") and opts.names() == ["sim-0001", "sim-0002",
                                                                    "sim-0003"]
    assert opts.events() == demo_script(3)
    default = options_from_args(build_parser().parse_args(["simulate"]))
    assert default.interval_s == 10.0 and not default.aws_limits
    assert default.pki == Path(".edgefleet/broker/pki") and default.port == 8883


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"devices": 0}, "--devices"), ({"interval_s": 0}, "--interval"),
     ({"prefix": "a/b"}, "--prefix"), ({"spike_kinds": ("cpu", "fan")}, "fan"),
     ({"backlog_share": 2.0}, "--backlog-share")],
)
def test_bad_options_are_refused_with_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimOptions(**kwargs).check()


def test_the_demo_script_starts_an_alert_in_the_first_minute() -> None:
    events = demo_script(5)
    assert all(e.at_s < 60 for e in events)
    cpu = next(e for e in events if e.kind == "spike" and e.spike_kind == "cpu")
    assert cpu.duration_s > 5 * 60  # longer than high_cpu's `for`, so it fires, then resolves
    assert any(e.kind == "dropout" for e in events)
    assert demo_script(1) == (events[0],)
