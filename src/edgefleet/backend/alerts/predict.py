"""Predictive disk alert: "disk <mount> full in under N hours", from a robust fit.

Pure functions, no I/O, no clock. :func:`forecast` fits a line to the points of one series
(``disk.used_percent[<mount>]``) over the last ``window_s`` seconds with the Theil-Sen
estimator (the median of the slopes between every pair of points: a few outliers or a
partial drop cannot tilt it) and answers when the line reaches ``full`` (100 %).

It is CONFIDENT only when every one of these holds, and a predict rule fires only then:

- enough points (``min_points``) spread over at least half the window;
- the slope is positive beyond doubt: at least ``min_positive`` (90 %) of the pairwise slopes
  are positive. A stable noisy disk has about half; a window holding a log rotation (a
  drop) has many negative pairs;
- the newest points sit on the line: their median residual is within ``max_residual``
  percentage points (a sudden drop or jump right now makes the old trend moot).

:class:`Series` is a bounded ring of ``(ts, value)`` points per key (one point per
``step_s`` at most), fed from the accepted samples by the alert centre.
"""

from __future__ import annotations

import math
import statistics
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

from edgefleet.backend.alerts.ruleset import PredictRule
from edgefleet.notify.model import Alert, alert_key

MAX_FIT_POINTS = 120  # 7,140 pairs per fit
FULL = 100.0
STEP_S = 120.0  # the centre keeps one point per 2 minutes and key
RESOLVE_FACTOR = 1.5  # hysteresis: resolve once the forecast is 1.5 x within away


@dataclass(frozen=True, slots=True)
class Forecast:
    """A fit: slope in percent per hour, the fitted value now, hours until full (inf when
    not growing) and whether the fit is confident."""

    slope_per_h: float
    level: float
    hours_to_full: float
    confident: bool
    reason: str


@dataclass(frozen=True, slots=True)
class FitSettings:
    """How :func:`forecast` decides; the defaults suit a 3 h window of minute samples."""

    window_s: float = 3 * 3600.0
    min_points: int = 12
    min_positive: float = 0.9
    max_residual: float = 1.5
    full: float = FULL


def forecast(points: list[tuple[float, float]], now: float, fit: FitSettings) -> Forecast:
    """Fit the points of the last ``fit.window_s`` before ``now``; see the module docstring."""
    recent = [(t, v) for t, v in points if now - fit.window_s <= t <= now and math.isfinite(v)]
    if len(recent) < fit.min_points or recent[-1][0] - recent[0][0] < fit.window_s / 2:
        return Forecast(0.0, math.nan, math.inf, False, "not enough points")
    sample = _thin(recent, MAX_FIT_POINTS)
    slopes = [(v2 - v1) / (t2 - t1) for (t1, v1), (t2, v2) in combinations(sample, 2)
              if t2 > t1]
    slope = statistics.median(slopes)
    intercept = statistics.median(v - slope * (t - now) for t, v in sample)
    positive = sum(1 for s in slopes if s > 0) / len(slopes)
    tail = [v - (intercept + slope * (t - now)) for t, v in sample[-5:]]
    hours = (fit.full - intercept) / (slope * 3600) if slope > 0 else math.inf
    hours = max(0.0, hours)
    if positive < fit.min_positive:
        return Forecast(slope * 3600, intercept, hours, False, "no clear growth")
    if abs(statistics.median(tail)) > fit.max_residual:
        return Forecast(slope * 3600, intercept, hours, False, "newest points off the line")
    return Forecast(slope * 3600, intercept, hours, True, "ok")


def _thin(points: list[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most ``limit`` points, evenly spaced by index (the newest kept)."""
    if len(points) <= limit:
        return points
    step = len(points) / limit
    picked = [points[int(i * step)] for i in range(limit - 1)]
    return [*picked, points[-1]]


class Series:
    """Recent points per key: at most one per ``step_s``, none older than ``keep_s`` before
    the newest, at most ``max_keys`` keys; two ``array('d')`` per key (16 bytes a point)."""

    def __init__(self, *, step_s: float = STEP_S, keep_s: float = 3 * 3600.0,
                 max_keys: int = 50_000) -> None:
        self.step_s = step_s
        self.keep_s = keep_s
        self.max_keys = max_keys
        self._points: dict[tuple[str, str], tuple[array[float], array[float]]] = {}

    def add(self, device: str, key: str, ts: float, value: float) -> None:
        """Remember a point (ignored when too close to the previous one, or out of order)."""
        if not math.isfinite(value):
            return
        ring = self._points.get((device, key))
        if ring is None:
            if len(self._points) >= self.max_keys:
                return
            ring = self._points[(device, key)] = (array("d"), array("d"))
        times, values = ring
        if times and ts < times[-1] + self.step_s:
            return
        times.append(ts)
        values.append(value)
        drop = next((i for i, t in enumerate(times) if t >= ts - self.keep_s), len(times))
        if drop:
            del times[:drop], values[:drop]

    def points(self, device: str, key: str) -> list[tuple[float, float]]:
        """The points kept for ``(device, key)``, oldest first."""
        ring = self._points.get((device, key))
        return [] if ring is None else list(zip(ring[0], ring[1], strict=True))

    def pairs(self) -> list[tuple[str, str]]:
        """Every ``(device, key)`` with points."""
        return list(self._points)

    def drop_stale(self, now: float) -> int:
        """Forget keys whose newest point is older than ``keep_s``; return how many."""
        stale = [k for k, (times, _) in self._points.items() if times[-1] < now - self.keep_s]
        for key in stale:
            del self._points[key]
        return len(stale)


@dataclass(frozen=True, slots=True)
class Replay:
    """What a predict rule did over one simulated series: when it first fired correctly
    (None if never), its lead time before the disk was full (hours), and false alerts."""

    first_true_at: float | None
    lead_h: float | None
    false_alerts: int
    days: float


def replay(  # noqa: PLR0917 - the scenario and the rule's settings
    points: list[tuple[float, float]], full_at: float | None, within_s: float,
    fit: FitSettings, check_every_s: float = 300.0, naive: bool = False,
) -> Replay:
    """Run a predict rule over ``points`` every ``check_every_s``; count each time it starts
    firing. A start is TRUE when the disk really fills within ``2 * within_s``, else FALSE.
    ``naive`` replaces the robust fit by a least-squares line over the last hour without any
    confidence check (what ``predict_linear`` alerts do), for comparison."""
    if not points:
        return Replay(None, None, 0, 0.0)
    firing, first_true, false_alerts = False, None, 0
    start, end = points[0][0], points[-1][0]
    series = Series(keep_s=fit.window_s)  # what the alert centre keeps
    at, i = start, 0
    while at <= end:
        while i < len(points) and points[i][0] <= at:
            series.add("d", "k", *points[i])
            i += 1
        if naive:
            now_firing = _naive_hours(points[:i], at, fit.full) * 3600 <= within_s
        else:
            made = forecast(series.points("d", "k"), at, fit)
            now_firing = made.confident and made.hours_to_full * 3600 <= within_s
        if now_firing and not firing:
            true = full_at is not None and 0 <= full_at - at <= 2 * within_s
            if true and first_true is None:
                first_true = at
            false_alerts += 0 if true else 1
        firing = now_firing
        at += check_every_s
    lead = None if first_true is None or full_at is None else (full_at - first_true) / 3600
    return Replay(first_true, lead, false_alerts, (end - start) / 86400)


def _naive_hours(points: list[tuple[float, float]], now: float, full: float) -> float:
    recent = [(t, v) for t, v in points if now - 3600 <= t <= now]
    if len(recent) < 2:
        return math.inf
    mean_t = statistics.fmean(t for t, _ in recent)
    mean_v = statistics.fmean(v for _, v in recent)
    var = sum((t - mean_t) ** 2 for t, _ in recent)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in recent) / var if var else 0.0
    level = mean_v + slope * (now - mean_t)
    return max(0.0, (full - level) / (slope * 3600)) if slope > 0 else math.inf


def observe(rules: Sequence[PredictRule], series: Series, device: str, ts: float,
            metrics: Mapping[str, float]) -> None:
    """Keep the points the predict rules watch (called with every accepted sample)."""
    for metric, value in metrics.items():
        family, _, rest = metric.partition("[")
        if any(r.enabled and r.family == family and r.applies_to(rest[:-1] or None)
               for r in rules):
            series.add(device, metric, ts, float(value))


def predict_events(
    rules: Sequence[PredictRule], series: Series, firing: Mapping[str, Alert], now: float
) -> list[Alert]:
    """Fire where a rule's confident forecast says full within ``within_s``; resolve where
    the forecast is past ``RESOLVE_FACTOR * within_s`` (or the disk stopped growing)."""
    events: list[Alert] = []
    for device, metric in series.pairs():
        family, _, rest = metric.partition("[")
        instance = rest[:-1] or None
        for rule in rules:
            if not (rule.enabled and rule.family == family and rule.applies_to(instance)):
                continue
            fit = FitSettings(window_s=rule.window_s)
            made = forecast(series.points(device, metric), now, fit)
            if math.isnan(made.level):
                continue  # not enough points: keep whatever holds now
            key = alert_key(rule.name, device, instance)
            old = firing.get(key)
            if old is None and made.confident and made.hours_to_full * 3600 <= rule.within_s:
                events.append(_predict_alert("firing", rule, device, instance, made, now, now))
            elif old is not None and made.hours_to_full * 3600 > RESOLVE_FACTOR * rule.within_s:
                events.append(_predict_alert("resolved", rule, device, instance, made,
                                             old.started_at, now))
    return events


def _predict_alert(  # noqa: PLR0917 - one event's fields
    kind: str, rule: PredictRule, device: str, instance: str | None, made: Forecast,
    started_at: float, now: float,
) -> Alert:
    hours = min(made.hours_to_full, 1e6)
    within_h = rule.within_s / 3600
    fields = {"rule": rule.name, "device": device, "instance": instance or "",
              "metric": rule.family, "value": hours, "threshold": within_h, "clear": within_h,
              "op": "<", "severity": rule.severity, "kind": kind}
    return Alert.new(kind=kind, rule=rule.name, device=device, instance=instance,
                     severity=rule.severity, value=hours, threshold=within_h,
                     labels=dict(rule.labels), summary=rule.summary.format(**fields),
                     started_at=started_at, at=now)
