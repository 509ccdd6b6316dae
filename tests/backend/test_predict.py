"""The predictive disk alert over the simulator's disk scenarios (sim/model.py disk_series):
a disk filling linearly and a sudden fill are announced hours ahead; a disk with daily log
rotation and a stable noisy disk raise no false alert. Deterministic (seeded series). The
table in docs/alerts.md is the one :func:`table` prints."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from tests.backend.store_backends import fleet_store

from edgefleet.backend.alerts.centre import AlertCenter
from edgefleet.backend.alerts.predict import FitSettings, Replay, Series, forecast, replay
from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.backend.records import AcceptedSample
from edgefleet.errors import ConfigError
from edgefleet.notify import AlertDispatcher, Outbox
from edgefleet.sim.model import DISK_SCENARIOS, disk_series

WITHIN_S = 6 * 3600.0
SEEDS = (0, 1, 2)
FIT = FitSettings(window_s=3 * 3600.0)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"


def runs(scenario: str, *, naive: bool = False) -> list[Replay]:
    return [replay(*disk_series(scenario, seed=seed), within_s=WITHIN_S, fit=FIT, naive=naive)
            for seed in SEEDS]


def row(scenario: str, method: str, results: list[Replay]) -> str:
    leads = [r.lead_h for r in results if r.lead_h is not None]
    lead = f"{min(leads):.1f}-{max(leads):.1f} h" if leads else "-"
    detected = f"{len(leads)}/{len(results)}"
    per_day = sum(r.false_alerts for r in results) / sum(r.days for r in results)
    return f"| {scenario} | {method} | {detected} | {lead} | {per_day:.2f} |"


def table() -> list[str]:
    """The rows of the docs table: the predict rule and a naive least-squares alert."""
    return [row(name, method, runs(name, naive=method != "predict_full"))
            for name in DISK_SCENARIOS for method in ("predict_full", "naive 1 h fit")]


@pytest.mark.parametrize("scenario", ["rotation", "noisy"])
def test_no_false_alert_on_rotation_and_noise(scenario: str) -> None:
    for result in runs(scenario):
        assert result.false_alerts == 0
        assert result.first_true_at is None


def test_a_naive_fit_does_alert_falsely_on_the_noisy_disk() -> None:
    """The noisy scenario is a real trap: a least-squares line over the last hour fires."""
    assert sum(r.false_alerts for r in runs("noisy", naive=True)) > 0


def test_linear_and_sudden_fills_are_announced_ahead() -> None:
    for result in runs("linear"):
        assert result.false_alerts == 0
        assert result.lead_h is not None and 5.0 <= result.lead_h <= 12.0
    for result in runs("sudden"):
        assert result.false_alerts == 0
        assert result.lead_h is not None and result.lead_h >= 1.5


@pytest.mark.slow  # replays 24 simulated series (~10 s)
def test_the_docs_table_is_the_measured_one() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for line in table():
        assert line in text, f"docs/alerts.md lacks or differs from: {line}"


def test_forecast_needs_enough_points_and_clear_growth() -> None:
    few = [(float(t), 50.0 + t / 3600) for t in range(0, 3600, 600)]
    assert not forecast(few, 3600.0, FIT).confident
    steady = [(float(t), 50.0 + t / 3600) for t in range(0, 3 * 3600, 60)]
    made = forecast(steady, 3 * 3600.0, FIT)
    assert made.confident and made.slope_per_h == pytest.approx(1.0)
    assert made.hours_to_full == pytest.approx(47.0, abs=0.1)
    falling = [(t, 100 - v) for t, v in steady]
    assert math.isinf(forecast(falling, 3 * 3600.0, FIT).hours_to_full)


def test_series_keeps_one_point_per_step_and_a_bounded_span() -> None:
    series = Series(step_s=60.0, keep_s=600.0)
    for ts in range(0, 3600, 10):
        series.add("d1", "disk.used_percent[/]", float(ts), 1.0)
    points = series.points("d1", "disk.used_percent[/]")
    assert len(points) == 11 and points[-1][0] == 3540.0  # 10 minutes back from the newest
    assert [b[0] - a[0] for a, b in itertools.pairwise(points)] == [60.0] * 10
    assert series.drop_stale(3540.0 + 601) == 1
    assert series.pairs() == []


if __name__ == "__main__":
    print("\n".join(table()))


PREDICT_RULES = """
version: 1
rules:
  - {name: disk_forecast, kind: predict_full, metric: disk.used_percent, within: 6h,
     window: 3h, severity: warning, labels: {team: storage}}
"""


def test_a_predict_rule_fires_through_the_alert_centre(tmp_path: Path) -> None:
    rules = parse_rules(PREDICT_RULES)
    store = fleet_store(tmp_path / "fleet.db")
    outbox = Outbox(store.open_db())
    dispatcher = AlertDispatcher(outbox=outbox, notifier=None)
    centre = AlertCenter(rules, store, dispatcher)
    points, full_at = disk_series("sudden", seed=0, t0=1_800_000_000.0)
    assert full_at is not None
    fired: list[dict[str, object]] = []
    for ts, value in points:
        if ts > full_at - 1800:
            break
        sample = AcceptedSample(device="d1", seq=int(ts), ts=ts,
                                metrics={"disk.used_percent[/]": value})
        centre.on_samples([sample], ts)
        if int(ts) % 600 == 0:
            centre._predicted_at = -1e9
            fired += centre.tick(ts)
    [event] = fired
    assert event["rule"] == "disk_forecast" and event["instance"] == "/"
    assert event["kind"] == "firing" and event["labels"] == {"team": "storage"}
    lead_h = (full_at - float(str(event["at"]))) / 3600
    assert 1.5 <= lead_h <= 6.0
    assert "full in" in str(event["summary"])
    outbox.close()
    store.close()


@pytest.mark.parametrize(("snippet", "expected"), [
    ("{name: p, kind: predict_full, metric: cpu.percent, within: 6h}",
     "rule 'p' field 'metric': kind predict_full watches disk.used_percent"),
    ("{name: p, kind: predict_full, metric: disk.used_percent}",
     "rule 'p' field 'within': kind predict_full needs within"),
    ("{name: p, kind: predict_full, metric: disk.used_percent, within: 6h, threshold: 90}",
     "rule 'p' field 'threshold': not used by kind predict_full"),
    ("{name: p, kind: guess, metric: disk.used_percent}",
     "rule 'p' field 'kind': must be one of threshold, predict_full"),
])
def test_bad_predict_rules_are_one_line_errors(snippet: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(f"version: 1\nrules:\n  - {snippet}\n", source="r.yaml")
    assert str(info.value).startswith(f"rules file r.yaml: {expected}"), str(info.value)
