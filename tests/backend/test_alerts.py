"""The pure alert engine: firing, hysteresis, replay, instances, overrides, offline, state."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.backend.alerts.engine import (
    AlertState,
    AlertStateError,
    LiveAlertState,
    evaluate,
    evaluate_changes,
    evaluate_offline,
    firing,
    prune,
)
from edgefleet.backend.alerts.rules import RuleSet, default_rules_path, load_rules, parse_rules
from edgefleet.backend.alerts.state import conditions_from_rows, device_rows
from edgefleet.notify.model import Alert

RULES = parse_rules("""
version: 1
replay_grace: 2m
offline:
  for: 0s
  overrides: [{groups: [lab], enabled: false}]
groups: {lab: ["lab-*"]}
rules:
  - name: cpu
    metric: cpu.percent
    op: ">"
    threshold: 90
    clear: 80
    for: 60s
    labels: {team: ops}
    summary: "CPU {value:.0f}% on {device}"
    overrides:
      - devices: ["db-*"]
        threshold: 95
      - groups: [lab]
        enabled: false
  - name: disk
    metric: disk.used_percent
    op: ">="
    threshold: 90
    for: 0s
    severity: critical
  - name: cold
    metric: temp.celsius
    instance: "coretemp/*"
    op: "<"
    threshold: 5
    clear: 10
    for: 0
""")

Sample = tuple[float, Mapping[str, float]]


def run(
    samples: Iterable[Sample],
    *,
    device: str = "d1",
    rules: RuleSet = RULES,
    state: AlertState | None = None,
    now: float | None = None,
) -> tuple[AlertState, list[Alert]]:
    """Evaluate samples in order; ``now`` defaults to each sample's own ts (live data)."""
    state = AlertState() if state is None else state
    events: list[Alert] = []
    for ts, metrics in samples:
        state, new = evaluate(rules, state, device, ts, metrics, ts if now is None else now)
        events.extend(new)
    return state, events


def cpu(*points: tuple[float, float]) -> list[Sample]:
    return [(ts, {"cpu.percent": value}) for ts, value in points]


def every_10s(*values: float, start: float = 0) -> list[tuple[float, float]]:
    return [(start + 10 * i, v) for i, v in enumerate(values)]


def brief(events: Iterable[Alert]) -> list[tuple[str, float, float]]:
    return [(e.kind, e.at, e.started_at) for e in events]


CPU_CASES = [
    ("fires after holding for 60 s", every_10s(95, 95, 95, 95, 95, 95, 95, 95),
     [("firing", 60, 0)]),
    ("not before", every_10s(95, 95, 95, 95, 95, 95), []),
    ("a dip restarts pending", every_10s(95, 95, 95, 85, 95, 95, 95, 95, 95, 95, 95),
     [("firing", 100, 40)]),
    ("by sample ts across a gap", [(0, 95), (100, 95)], [("firing", 100, 0)]),
    ("at threshold is not over", every_10s(*[90] * 10), []),
    ("hysteresis: 85 keeps it firing, 80 resolves",
     every_10s(95, 95, 95, 95, 95, 95, 95, 85, 81, 85, 80, 70),
     [("firing", 60, 0), ("resolved", 100, 0)]),
    ("fires again after resolving", every_10s(*[95] * 7, 50, *[95] * 7),
     [("firing", 60, 0), ("resolved", 70, 0), ("firing", 140, 80)]),
    ("out of order and duplicate samples are ignored",
     [(0, 95), (60, 95), (30, 10), (60, 10), (70, 95)], [("firing", 60, 0)]),
]


@pytest.mark.parametrize(("points", "expected"), [c[1:] for c in CPU_CASES],
                         ids=[c[0] for c in CPU_CASES])
def test_cpu_rule(points: list[tuple[float, float]], expected: list[tuple[str, float, float]]) -> None:
    _, events = run(cpu(*points))
    assert brief(events) == expected


def test_event_fields() -> None:
    _, events = run(cpu(*every_10s(*[95] * 6, 96.4)))
    (event,) = events
    assert (event.kind, event.rule, event.device, event.instance) == ("firing", "cpu", "d1", None)
    assert (event.severity, event.value, event.threshold) == ("warning", 96.4, 90)
    assert event.labels == {"team": "ops"}
    assert event.summary == "CPU 96% on d1"
    assert event.key == "cpu|d1|"
    assert event.event_id == "cpu|d1||firing|0.000"


def test_flapping_storm_emits_at_most_one_firing_and_one_resolved() -> None:
    rules = parse_rules("""
version: 1
rules: [{name: r, metric: cpu.percent, op: ">", threshold: 90, clear: 80, for: 0}]
""")
    values = [90 + 5 * math.sin(i) for i in range(1000)] + [50]
    _, events = run(cpu(*every_10s(*values)), rules=rules)
    assert [e.kind for e in events] == ["firing", "resolved"]
    _, slow = run(cpu(*every_10s(*values)))  # the 60 s rule never holds long enough
    assert slow == []


def test_missing_and_non_finite_values_change_nothing() -> None:
    state, _ = run(cpu(*every_10s(95, 95, 95)))
    after, events = run([(40, {"mem.used_percent": 1.0}), (50, {"cpu.percent": math.nan})],
                        state=state)
    assert events == []
    assert after.get("cpu", "d1") == state.get("cpu", "d1")


def test_old_state_is_not_changed() -> None:
    state, _ = run(cpu(*every_10s(*[95] * 6)))
    newer, events = run(cpu((60, 95)), state=state)
    assert len(events) == 1
    assert firing(state) == []
    assert len(firing(newer)) == 1


class TestReplay:
    NOW = 10_000.0

    def test_old_spike_in_a_backlog_raises_nothing(self) -> None:
        backlog = cpu(*every_10s(*[99] * 30, 50, start=1000))
        state, events = run(backlog, now=self.NOW)
        assert events == []
        _, events = run(cpu((self.NOW, 50)), state=state, now=self.NOW)
        assert events == []

    def test_condition_still_holding_fires_at_first_fresh_sample(self) -> None:
        backlog = cpu(*every_10s(*[99] * 88, start=9000))  # 9000 .. 9870, older than 9880
        state, events = run(backlog, now=self.NOW)
        assert events == []
        _, events = run(cpu((9990, 97)), state=state, now=self.NOW)
        assert brief(events) == [("firing", 9990, 9000)]

    def test_samples_within_the_grace_fire_normally(self) -> None:
        _, events = run(cpu(*every_10s(*[99] * 7, start=9900)), now=self.NOW)
        assert brief(events) == [("firing", 9960, 9900)]

    def test_a_replayed_recovery_resolves(self) -> None:
        state, _ = run(cpu(*every_10s(*[99] * 7, start=1000)))
        _, events = run(cpu((1100, 10)), state=state, now=self.NOW)
        assert brief(events) == [("resolved", 1100, 1000)]


def test_rules_apply_to_each_instance() -> None:
    samples: list[Sample] = [
        (0, {"disk.used_percent[/]": 95, "disk.used_percent[/data]": 50}),
        (10, {"disk.used_percent[/]": 96, "disk.used_percent[/data]": 91}),
        (20, {"disk.used_percent[/]": 20}),
    ]
    state, events = run(samples)
    assert [(e.kind, e.instance, e.at, e.severity) for e in events] == [
        ("firing", "/", 0, "critical"), ("firing", "/data", 10, "critical"),
        ("resolved", "/", 20, "critical")]
    assert [key for key, _ in firing(state)] == ["disk|d1|/data"]


def test_instance_glob_narrows_a_rule() -> None:
    _, events = run([(0, {"temp.celsius[coretemp/Core 0]": 2, "temp.celsius[acpitz/t1]": 2,
                          "temp.celsius": 2})])
    assert [(e.rule, e.instance) for e in events] == [("cold", "coretemp/Core 0")]


@pytest.mark.parametrize(
    ("device", "value", "expected"),
    [("d1", 93, [("firing", 60, 0)]), ("db-1", 93, []), ("db-1", 96, [("firing", 60, 0)]),
     ("lab-3", 99, [])],
)
def test_overrides_by_device_glob_and_group(
    device: str, value: float, expected: list[tuple[str, float, float]]
) -> None:
    _, events = run(cpu(*every_10s(*[value] * 7)), device=device)
    assert brief(events) == expected
    assert all(e.threshold == (95 if device.startswith("db-") else 90) for e in events)


class TestOffline:
    def test_fires_once_and_resolves(self) -> None:
        state, events = evaluate_offline(RULES, AlertState(), "d1", True, 100, 130)
        assert [(e.kind, e.at, e.started_at, e.severity, e.value) for e in events] == [
            ("firing", 130, 100, "critical", 30)]
        assert events[0].key == "offline|d1|"
        assert events[0].summary == "d1 is offline (30 s)"
        state, events = evaluate_offline(RULES, state, "d1", True, 100, 200)
        assert events == []
        state, events = evaluate_offline(RULES, state, "d1", False, 400, 401)
        assert [(e.kind, e.at, e.started_at, e.value) for e in events] == [
            ("resolved", 400, 100, 300)]
        state, events = evaluate_offline(RULES, state, "d1", True, 100, 500)  # stale report
        assert events == []
        assert firing(state) == []

    def test_waits_for_the_for_duration(self) -> None:
        rules = parse_rules("version: 1\noffline: {for: 5m}\n")
        state, events = evaluate_offline(rules, AlertState(), "d1", True, 100, 200)
        assert events == []
        state, events = evaluate_offline(rules, state, "d1", True, 100, 400)
        assert brief(events) == [("firing", 400, 100)]
        state, events = evaluate_offline(rules, state, "d1", True, 100, 500)
        assert events == []

    def test_back_before_for_is_silent(self) -> None:
        rules = parse_rules("version: 1\noffline: {for: 5m}\n")
        state, _ = evaluate_offline(rules, AlertState(), "d1", True, 100, 200)
        state, events = evaluate_offline(rules, state, "d1", False, 250, 250)
        assert events == []
        _, events = evaluate_offline(rules, state, "d1", True, 1000, 1200)
        assert events == []  # a new outage starts its own clock

    def test_disabled_by_group_override(self) -> None:
        _, events = evaluate_offline(RULES, AlertState(), "lab-1", True, 100, 1000)
        assert events == []


class TestStateJson:
    def test_round_trip_keeps_firing_alerts_firing(self) -> None:
        state, events = run(cpu(*every_10s(*[95] * 7)))
        state, _ = evaluate_offline(RULES, state, "d2", True, 5, 10)
        restored = AlertState.from_json(state.to_json())
        def kept(s: AlertState) -> list[tuple[str, tuple[object, ...]]]:
            return [(key, tuple(cond[:5])) for key, cond in firing(s)]  # v1 keeps no ``seen``

        assert kept(restored) == kept(state)
        assert len(firing(restored)) == 2
        assert restored.to_json() == state.to_json()
        _, again = run(cpu((70, 99), (80, 85)), state=restored)
        assert again == []
        _, resolved = run(cpu((90, 10)), state=restored)
        assert resolved[0].event_id == events[0].event_id.replace("firing", "resolved")

    def test_round_trip_keeps_pending(self) -> None:
        state, _ = run(cpu(*every_10s(95, 95, 95)))
        _, events = run(cpu((60, 95)), state=AlertState.from_json(state.to_json()))
        assert brief(events) == [("firing", 60, 0)]

    def test_json_is_versioned_and_compact(self) -> None:
        doc = json.loads(AlertState().to_json())
        assert doc == {"v": 1, "alerts": []}

    @pytest.mark.parametrize("text", ["", "[]", '{"v": 2, "alerts": []}', '{"v": 1}',
                                      '{"v": 1, "alerts": [[1, 2]]}'])
    def test_bad_json(self, text: str) -> None:
        with pytest.raises(AlertStateError):
            AlertState.from_json(text)


def test_prune_drops_keys_of_removed_or_disabled_rules() -> None:
    state, _ = run(cpu(*every_10s(*[95] * 7)))
    state, _ = run([(0, {"disk.used_percent[/]": 50})], state=state)
    fewer = parse_rules("""
version: 1
rules:
  - {name: disk, metric: disk.used_percent, op: ">", threshold: 90}
""")
    pruned, dropped = prune(fewer, state)
    assert dropped == ["cpu|d1|"]
    assert pruned.get("cpu", "d1") is None
    assert pruned.get("disk", "d1", "/") is not None
    assert prune(RULES, state)[1] == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-20, 60),  # step of ts; negative = out of order
            st.floats(0, 100, allow_nan=False),  # value
            st.sampled_from(["coretemp/a", "coretemp/b"]),
            st.sampled_from([0.0, 1000.0]),  # how far `now` is ahead (1000 = replay)
            st.booleans(),  # persist and restore the state before this sample
        ),
        max_size=80,
    ),
    st.sampled_from([0, 30]),
)
def test_events_alternate_per_key_starting_with_firing(
    steps: list[tuple[float, float, str, float, bool]], for_s: int
) -> None:
    rules = parse_rules(f"""
version: 1
rules:
  - {{name: hot, metric: temp.celsius, op: ">", threshold: 60, clear: 40, for: {for_s}}}
  - {{name: near, metric: temp.celsius, op: ">=", threshold: 50, for: {for_s}}}
""")
    state, ts = AlertState(), 0.0
    last_kind: dict[str, str] = {}
    for step, value, instance, lag, restore in steps:
        ts += step
        if restore:
            state = AlertState.from_json(state.to_json())
        state, events = evaluate(rules, state, "d", ts, {f"temp.celsius[{instance}]": value},
                                 ts + lag)
        for event in events:
            assert last_kind.get(event.key, "resolved") != event.kind
            last_kind[event.key] = event.kind
    assert {key for key, _ in firing(state)} == {k for k, v in last_kind.items() if v == "firing"}


def test_a_fleet_keeps_one_condition_per_rule_device_and_instance() -> None:
    rules = load_rules(default_rules_path())
    metrics = {"cpu.percent": 50.0, "memory.used_percent": 40.0, "swap.used_percent": 0.0,
               "load.load1": 0.5, "load.load5_per_core": 0.2, "disk.used_percent[/]": 60.0,
               "disk.used_percent[/data]": 70.0, "temp.celsius[coretemp/Package id 0]": 50.0,
               **{f"net.rx_bytes_per_s[eth{i}]": 1.0 for i in range(4)}}
    state = AlertState()
    for i in range(5000):
        device = f"edge-{i % 1000}"
        state, events = evaluate(rules, state, device, float(i), metrics, float(i))
        assert events == []
    # cpu, memory, swap, load, temp, and two disk rules x two mounts (the engine's speed is
    # measured in bench/, not asserted here)
    assert len(state) == 1000 * 9


def test_a_sample_from_a_wrong_future_clock_does_not_freeze_the_key() -> None:
    state, _ = run(cpu((1e9, 50)), now=1000)  # device clock far ahead, then corrected
    _, events = run(cpu(*every_10s(*[95] * 7, start=1000)), state=state)
    assert brief(events) == [("firing", 1060, 1000)]


def test_a_clock_jumping_ahead_does_not_skip_the_for_duration() -> None:
    # pending from t=1000; then the device clock jumps one hour ahead while the backend's
    # clock is at 1010: that sample is in the future and must not fire the alert
    state, events = run(cpu((1000, 95)), now=1000)
    state, events = run(cpu((1000 + 3600, 95)), state=state, now=1010)
    assert events == []
    # the clock comes back: the condition, pending since 1000, fires once `for` has passed
    _, events = run(cpu(*every_10s(*[95] * 8, start=1020)), state=state)
    assert brief(events) == [("firing", 1060, 1000)]


def test_a_pending_time_from_a_future_clock_restarts_when_the_clock_returns() -> None:
    state, events = run(cpu((5000, 95)), now=1000)  # first sample comes from the future
    assert events == []
    _, events = run(cpu(*every_10s(*[95] * 8, start=1010)), state=state)
    assert brief(events) == [("firing", 1070, 1010)]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-20, 60),  # step of ts; negative = out of order
            st.floats(0, 100, allow_nan=False),
            st.sampled_from(["coretemp/a", "coretemp/b"]),
            st.booleans(),  # save the device's document (pending and firing only), restore it
        ),
        max_size=60,
    )
)
def test_per_device_documents_keep_events_alternating(
    steps: list[tuple[float, float, str, bool]],
) -> None:
    rules = parse_rules("""
version: 1
rules:
  - {name: hot, metric: temp.celsius, op: ">", threshold: 60, clear: 40, for: 20}
""")
    state, ts = AlertState(), 0.0
    last_kind: dict[str, str] = {}
    for step, value, instance, restore in steps:
        ts += step
        if restore:
            rows = json.loads(json.dumps(device_rows(state.device("d"))))
            state = AlertState().with_devices({"d": conditions_from_rows(rows)})
        state, events = evaluate(rules, state, "d", ts, {f"temp.celsius[{instance}]": value}, ts)
        for event in events:
            assert last_kind.get(event.key, "resolved") != event.kind
            last_kind[event.key] = event.kind
    assert {key for key, _ in firing(state)} == {k for k, v in last_kind.items() if v == "firing"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(["a", "b"]), st.floats(-20, 60), st.floats(0, 100),
                      st.sampled_from(["/", "/data", None])),
            max_size=6,
        ),
        max_size=15,
    )
)
def test_batches_of_changes_equal_one_sample_at_a_time(
    batches: list[list[tuple[str, float, float, str | None]]],
) -> None:
    rules = parse_rules("""
version: 1
rules:
  - {name: full, metric: disk.used_percent, op: ">", threshold: 60, clear: 40, for: 20}
  - {name: any, metric: disk.used_percent, op: ">=", threshold: 50, for: 0}
""")
    one, live = AlertState(), LiveAlertState()
    by_one: list[Alert] = []
    by_batch: list[Alert] = []
    ts = 1000.0
    for batch in batches:
        samples = []
        for device, step, value, instance in batch:
            ts += step
            key = "disk.used_percent" + (f"[{instance}]" if instance else "")
            samples.append((device, ts, {key: value}))
        for device, at, metrics in samples:  # `now` is the time the batch is handled
            one, new = evaluate(rules, one, device, at, metrics, ts)
            by_one += new
        changes, new = evaluate_changes(rules, live, samples, ts)
        live.apply(changes)
        by_batch += new
    assert [e.event_id for e in by_batch] == [e.event_id for e in by_one]
    assert sorted(map(repr, live.items())) == sorted(map(repr, one.items()))
