"""The rules file's alert-operations parts (issue 18): ``kind: predict_full`` rules and the
``routes:`` section, checked and compiled. Checks return ``(location, message)`` for
:mod:`edgefleet.backend.alerts.rules` to turn into its one-line error, or None."""

from __future__ import annotations

from collections.abc import Mapping

from edgefleet.backend.alerts.rules_schema import (
    DEFAULT_PREDICT_SUMMARY,
    DEFAULT_SUMMARY,
    PREDICT_FAMILIES,
    RouteSpec,
    RoutesSpec,
    RulesFile,
    RuleSpec,
)
from edgefleet.backend.alerts.ruleset import PredictRule
from edgefleet.notify.routing import DEFAULT_RECEIVER, Receiver, Route, RouteTree

Problem = tuple[tuple[int | str, ...], str]
DEFAULT_WINDOW_S = 3 * 3600.0
MAX_ROUTE_DEPTH = 8


def check_predict(rule: RuleSpec, loc: tuple[int | str, ...]) -> Problem | None:
    """A predict rule needs ``within``, watches a disk percentage, takes no threshold."""
    family = rule.metric.partition("[")[0]
    if family not in PREDICT_FAMILIES:
        return (*loc, "metric"), f"kind predict_full watches {' or '.join(PREDICT_FAMILIES)}"
    if rule.within is None or rule.within <= 0:
        return (*loc, "within"), "kind predict_full needs within, e.g. 6h"
    for name in ("op", "threshold", "clear"):
        if getattr(rule, name) is not None:
            return (*loc, name), "not used by kind predict_full (it fires on a forecast)"
    if rule.overrides:
        return (*loc, "overrides"), "kind predict_full takes no overrides"
    window = DEFAULT_WINDOW_S if rule.window is None else rule.window
    if window < 1800:
        return (*loc, "window"), "must be at least 30m for a trustworthy fit"
    return None


def compile_predict(doc: RulesFile) -> tuple[PredictRule, ...]:
    """The ``kind: predict_full`` rules of a checked file."""
    out = []
    for spec in doc.rules:
        if spec.kind != "predict_full" or spec.within is None:
            continue
        family, _, rest = spec.metric.partition("[")
        summary = DEFAULT_PREDICT_SUMMARY if spec.summary == DEFAULT_SUMMARY else spec.summary
        out.append(PredictRule(
            name=spec.name, family=family, instance=rest[:-1] if rest else spec.instance,
            within_s=spec.within, window_s=spec.window or DEFAULT_WINDOW_S,
            severity=spec.severity or doc.defaults.severity, enabled=spec.enabled,
            labels=dict(spec.labels), summary=summary))
    return tuple(out)


def check_routes(routes: RoutesSpec, groups: Mapping[str, object]) -> Problem | None:
    """Receivers are one kind each; routes name known receivers and groups."""
    for name, receiver in routes.receivers.items():
        loc: tuple[int | str, ...] = ("routes", "receivers", name)
        if name == DEFAULT_RECEIVER:
            return loc, "'default' is the backend's own Slack settings; pick another name"
        if bool(receiver.slack_channel) == bool(receiver.webhook):
            return loc, "a receiver needs exactly one of slack_channel or webhook"
    return _check_tree(routes.routes, routes, groups, ("routes", "routes"), 0)


def _check_tree(
    nodes: list[RouteSpec], routes: RoutesSpec, groups: Mapping[str, object],
    loc: tuple[int | str, ...], depth: int,
) -> Problem | None:
    if depth > MAX_ROUTE_DEPTH:
        return loc, f"routes nest deeper than {MAX_ROUTE_DEPTH} levels"
    for i, node in enumerate(nodes):
        here = (*loc, i)
        known = {*routes.receivers, DEFAULT_RECEIVER}
        if node.receiver is not None and node.receiver not in known:
            names = ", ".join(sorted(known))
            return (*here, "receiver"), f"unknown receiver {node.receiver!r} (known: {names})"
        if node.receiver is None and not node.routes:
            return (*here, "receiver"), "a route needs a receiver or child routes"
        group = node.match.get("group")
        if group is not None and "*" not in group and group not in groups:
            return (*here, "match"), f"unknown group {group!r}"
        if (bad := _check_tree(node.routes, routes, groups, (*here, "routes"),
                               depth + 1)) is not None:
            return bad
    return None


def compile_routes(doc: RulesFile) -> RouteTree | None:
    """The routing tree of a checked file (None without a ``routes:`` section)."""
    if doc.routes is None:
        return None
    receivers = {
        name: Receiver(name, spec.slack_channel, spec.webhook, spec.group_window, spec.repeat)
        for name, spec in doc.routes.receivers.items()
    }
    return RouteTree(receivers, tuple(_route(node) for node in doc.routes.routes))


def _route(node: RouteSpec) -> Route:
    return Route(dict(node.match), node.receiver, node.continue_,
                 tuple(_route(child) for child in node.routes))
