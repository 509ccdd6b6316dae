"""The simulator's value model: seeded, plausible, and its spikes trip the default rules."""

from __future__ import annotations

import math
import random
import re
import statistics

import pytest

from edgefleet.backend.alerts.engine import AlertState, evaluate
from edgefleet.backend.alerts.rules import default_rules_path, load_rules
from edgefleet.sim.device import SimDevice
from edgefleet.sim.model import (
    PEAK_HOUR_UTC,
    SPIKE_KINDS,
    MetricModel,
    diurnal,
    make_profile,
    make_spike,
)
from edgefleet.sim.options import ScriptedEvent, SimOptions
from edgefleet.wire.messages import METRIC_KEY_PATTERN, Sample

T0 = 1_800_000_000.0 - (1_800_000_000.0 % 86400)  # a UTC midnight
KEY_RE = re.compile(METRIC_KEY_PATTERN)


def _model(seed: str = "a", t0: float = T0) -> MetricModel:
    rng = random.Random(seed)
    return MetricModel(make_profile(rng, t0), rng, t0)


def _run(model: MetricModel, start: float, seconds: float, step: float = 10.0, spike=None):
    n = int(seconds / step)
    return [(start + i * step, model.sample(start + i * step, spike)) for i in range(n)]


def test_same_seed_same_values_other_seed_other_values() -> None:
    a = _run(_model("x"), T0, 600)
    b = _run(_model("x"), T0, 600)
    c = _run(_model("y"), T0, 600)
    assert a == b
    assert a != c


def test_daily_curve_peaks_at_the_peak_hour_and_bottoms_twelve_hours_later() -> None:
    peak = T0 + PEAK_HOUR_UTC * 3600
    assert diurnal(peak) == pytest.approx(1.0)
    assert diurnal(peak + 12 * 3600) == pytest.approx(0.0, abs=1e-9)
    assert diurnal(peak + 6 * 3600) == pytest.approx(0.5)
    hours = [diurnal(peak + h * 3600) for h in range(13)]
    assert hours == sorted(hours, reverse=True)  # falls steadily from peak to trough
    assert diurnal(peak + 2 * 3600, phase_h=2.0) == pytest.approx(1.0)


def test_cpu_follows_the_daily_curve() -> None:
    model = _model("curve")
    phase = model.p.phase_h
    peak = T0 + (PEAK_HOUR_UTC + phase) * 3600
    at_peak = [m["cpu.percent"] for _, m in _run(model, peak - 900, 1800)]
    at_trough = [m["cpu.percent"] for _, m in _run(model, peak + 12 * 3600 - 900, 1800)]
    assert statistics.mean(at_peak) > statistics.mean(at_trough) + 5


def test_every_value_is_valid_and_every_key_is_a_protocol_key() -> None:
    for seed in range(20):
        model = _model(str(seed))
        for ts, metrics in _run(model, T0, 3 * 3600, step=60):
            Sample(seq=0, ts=ts, metrics=metrics)  # the protocol model accepts it
            for key, value in metrics.items():
                assert KEY_RE.match(key), key
                assert math.isfinite(value) and value >= 0, (key, value)
                if "percent" in key:
                    assert value <= 100, (key, value)
            # below every default rule's `clear` level: no alert without a spike
            assert metrics["cpu.percent"] < 80 and metrics["memory.used_percent"] < 85
            assert metrics["disk.used_percent[/]"] < 85 and metrics["swap.used_percent"] < 70
            assert metrics["temp.celsius[coretemp/Package id 0]"] < 75
            assert metrics["load.load5_per_core"] < 1.5


def test_the_keys_are_those_of_the_real_collectors() -> None:
    model = _model("keys")
    keys = set(model.sample(T0))
    cores = model.p.cores
    assert {f"cpu.core_percent[{i}]" for i in range(cores)} <= keys
    assert {"cpu.percent", "load.load1", "load.load5_per_core", "memory.used_percent",
            "memory.total_bytes", "swap.used_percent", "disk.used_percent[/]",
            "disk.free_bytes[/]", "net.rx_bytes_per_s[eth0]", "uptime.seconds",
            "procs.count", "temp.celsius[coretemp/Package id 0]"} <= keys


def test_disk_grows_slowly_and_memory_total_is_stable() -> None:
    model = _model("disk")
    first = model.sample(T0 + 60)
    later = model.sample(T0 + 86400)
    grown = later["disk.used_percent[/]"] - first["disk.used_percent[/]"]
    assert 0 < grown < 1.0
    assert later["disk.free_bytes[/]"] < first["disk.free_bytes[/]"]
    assert later["memory.total_bytes"] == first["memory.total_bytes"]


def test_temperature_is_correlated_with_cpu() -> None:
    model = _model("temp")
    samples = [m for _, m in _run(model, T0, 24 * 3600, step=60)]
    cpu = [m["cpu.percent"] for m in samples]
    temp = [m["temp.celsius[coretemp/Package id 0]"] for m in samples]
    assert statistics.correlation(cpu, temp) > 0.5


def test_network_has_bursts() -> None:
    model = _model("net")
    rx = [m["net.rx_bytes_per_s[eth0]"] for _, m in _run(model, T0, 6 * 3600, step=5)]
    assert max(rx) > 5 * statistics.median(rx)


def test_reboot_restarts_uptime() -> None:
    model = _model("boot")
    assert model.sample(T0)["uptime.seconds"] > 3000
    model.reboot(T0 + 100)
    assert model.sample(T0 + 110)["uptime.seconds"] == pytest.approx(10.0)


@pytest.mark.parametrize("kind", sorted(SPIKE_KINDS))
def test_a_spike_holds_its_key_above_the_rule_threshold_for_its_whole_window(kind: str) -> None:
    model = _model(f"spike-{kind}")
    spike = make_spike(kind, T0 + 600, 300)
    key, threshold = spike.key, {"cpu": 90, "memory": 90, "disk": 95, "swap": 80, "temp": 80,
                                 "load": 2}[kind]
    for ts, metrics in _run(model, T0, 1500, spike=spike):
        inside = T0 + 600 <= ts < T0 + 900
        assert (metrics[key] > threshold) == inside, (ts - T0, metrics[key])
    if kind == "cpu":
        cores = [v for k, v in metrics.items() if k.startswith("cpu.core_percent")]
        assert max(cores) <= 100


def _rule_for(kind: str):
    rules = load_rules(default_rules_path())
    family = SPIKE_KINDS[kind].key.partition("[")[0]
    found = rules.rules_for(family)
    return rules, found


@pytest.mark.parametrize("kind", sorted(SPIKE_KINDS))
def test_default_rules_fire_during_a_spike_and_resolve_after_it(kind: str) -> None:
    """The real alert engine, fed a simulated device's samples, fires only for the spike."""
    rules, watching = _rule_for(kind)
    assert watching, f"no default rule watches {SPIKE_KINDS[kind].key}"
    hold = SPIKE_KINDS[kind].hold_s
    assert all(hold > r.base.for_s for r in watching)
    opts = SimOptions(devices=1, spike_rate=0, dropout_rate=0,
                      script=(ScriptedEvent(0, "spike", 60.0, hold, kind),))
    dev = SimDevice("sim-0001", 0, opts, seed=1, t0=T0, stream="s")
    state, events = AlertState(), []
    for i in range(int((hold + 600) / 10)):
        ts = T0 + i * 10
        dev.advance(ts)
        sample = dev.take_sample(ts)
        assert sample is not None
        metrics = Sample.model_validate_json(
            b'{"seq":0,"ts":%f,' % ts + sample.body[1:]).metrics
        state, new = evaluate(rules, state, "sim-0001", ts, metrics, now=ts)
        events += new
    fired = {(e.rule, e.kind) for e in events}
    expected = {r.name for r in watching if SPIKE_KINDS[kind].level - SPIKE_KINDS[kind].jitter
                > r.base.threshold}
    assert expected, "the spike level is below every threshold"
    assert fired == {(name, k) for name in expected for k in ("firing", "resolved")}
    spike = dev.snapshot().spikes[0]
    for event in events:
        if event.kind == "firing":  # as soon as the rule's `for` has passed
            rule = next(r for r in watching if r.name == event.rule)
            assert spike.start + rule.base.for_s <= event.at <= spike.start + rule.base.for_s + 10
        else:  # at the first sample after the spike
            assert spike.end <= event.at <= spike.end + 10
    assert all(e.instance in (None, SPIKE_KINDS[kind].key.partition("[")[2][:-1] or None)
               for e in events)
