"""The alert gate: which events go to Slack, given silences, maintenance and inhibition.

The alert centre hands every batch of events to :meth:`AlertGate.admit` before they reach
the outbox. A FIRING event that is muted (see :meth:`AlertGate.mute_of`, in this order: the
backend's lost feed, a maintenance window, an offline device or site, a silence) is HELD:
it stays firing in the centre (the API and the page show it, with why), but nothing is
sent. A RESOLVED event of a held alert is not sent either (nobody heard of it); one of an
alert that was sent is. :meth:`AlertGate.recheck` (every tick) re-decides the firing
alerts: a held one no longer muted (its silence expired, the window ended, the device came
back) is sent then, ONCE, with its original event id, so the outbox's exactly-once holds.

What is held lives in memory: after a restart, firing alerts muted at the first tick are
taken as held (one message when their mute ends, even if one went out before the restart).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from typing import Any

from edgefleet.backend.alerts.feed import FEED_KEY, FEED_RULE
from edgefleet.backend.alerts.inhibit import SITE_RULE, count_sites, site_changes
from edgefleet.backend.alerts.maintenance import window_for
from edgefleet.backend.alerts.ruleset import OFFLINE_RULE, Rule, RuleSet
from edgefleet.backend.alerts.silences import Silence, Silences
from edgefleet.backend.alerts.upkeep import PendingAlert
from edgefleet.notify.model import Alert

_CACHE_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Mute:
    """Why an alert sends nothing: ``kind`` silenced / maintenance / inhibited, ``by`` the
    silence id, the window's name, or what inhibits it (offline, site_offline:<group>,
    feed_lost)."""

    kind: str
    by: str

    def public(self) -> dict[str, str]:
        """``{"kind", "by"}``."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Scene:
    """What inhibition looks at: offline devices (-> since), groups with a site alert
    firing, and whether the feed is lost."""

    offline: Mapping[str, float]
    sites: frozenset[str]
    feed_lost: bool


class AlertGate:
    """Holds muted alerts back; releases them once when their mute ends."""

    def __init__(self, rules: RuleSet, silences: Silences) -> None:
        self.rules = rules
        self.silences = silences
        self.held: dict[str, Alert] = {}  # key -> firing alert never sent
        self.muted: dict[str, Mute] = {}  # key -> why, for the firing alerts muted now
        self.sites: dict[str, Alert] = {}  # group -> its firing site alert
        self.covered: dict[str, str] = {}  # key -> reminder event id its release stands for
        self.known_devices: Callable[[], Iterable[str]] | None = None  # the fleet, by name
        self._groups: dict[str, tuple[str, ...]] = {}
        self._first_check = True

    def groups_of(self, device: str) -> tuple[str, ...]:
        """The rules-file groups ``device`` belongs to (globs matched, cached)."""
        found = self._groups.get(device)
        if found is None:
            found = tuple(name for name, members in self.rules.groups.items()
                          if any(fnmatchcase(device, m) for m in members))
            if len(self._groups) < _CACHE_MAX:
                self._groups[device] = found
        return found

    def fleet(self, fallback: Iterable[str]) -> list[str]:
        """Every device of the fleet (the backend's list, else ``fallback``)."""
        return list(self.known_devices() if self.known_devices is not None else fallback)

    def mute_of(self, alert: Alert, scene: Scene, now: float) -> Mute | None:
        """Why ``alert`` must send nothing now, or None."""
        policy = self.rules.inhibit
        if alert.rule == FEED_RULE:
            return self._silenced(alert, now)
        if policy.feed_lost and scene.feed_lost:
            return Mute("inhibited", FEED_RULE)
        window = window_for(self.rules.maintenance, alert.device, now)
        if window is not None:
            return Mute("maintenance", window.name)
        if alert.rule == OFFLINE_RULE:
            site = next((g for g in self.groups_of(alert.device) if g in scene.sites), None)
            if site is not None:
                return Mute("inhibited", f"{SITE_RULE}:{site}")
        elif alert.rule != SITE_RULE and policy.device_offline and alert.device in scene.offline:
            return Mute("inhibited", OFFLINE_RULE)
        return self._silenced(alert, now)

    def _silenced(self, alert: Alert, now: float) -> Mute | None:
        target = self.silences.target(alert.rule, alert.device, alert.severity, alert.labels)
        found = self.silences.silencing(target, now)
        return None if found is None else Mute("silenced", found.id)

    def admit(self, events: Sequence[Alert], offline: Mapping[str, float],
              firing: Mapping[str, Alert], now: float) -> list[Alert]:
        """The events to send; muted firing events are held, their resolutions dropped."""
        for event in events:  # a site alert of this batch inhibits the batch's own alerts
            if event.rule == SITE_RULE and event.kind == "firing":
                self.sites[event.device] = event
            elif event.rule == SITE_RULE:
                self.sites.pop(event.device, None)
        scene = self.scene(offline, firing)
        out: list[Alert] = []
        for event in events:
            key = event.key
            if event.kind == "firing":
                mute = self.mute_of(event, scene, now)
                if mute is not None:
                    self.held[key], self.muted[key] = event, mute
                    continue
                self.held.pop(key, None)
                self.muted.pop(key, None)
            else:
                self.muted.pop(key, None)
                if self.held.pop(key, None) is not None:
                    continue
            out.append(event)
        return out

    def recheck(self, firing: Mapping[str, Alert], scene: Scene, now: float) -> list[Alert]:
        """Re-decide every firing alert; return the held ones to send now (once)."""
        muted: dict[str, Mute] = {}
        release: list[Alert] = []
        for key, alert in firing.items():
            mute = self.mute_of(alert, scene, now)
            if mute is not None:
                muted[key] = mute
                if self._first_check:
                    self.held.setdefault(key, alert)
            elif (held := self.held.pop(key, None)) is not None:
                release.append(held)
        for key in [k for k in self.held if k not in firing]:
            del self.held[key]
        for key in [k for k in self.covered if k not in firing]:
            del self.covered[key]
        self.sites = {a.device: a for a in firing.values() if a.rule == SITE_RULE}
        self.muted = muted
        self._first_check = False
        return release

    def site_events(self, offline: Mapping[str, float], firing: Mapping[str, Alert],
                    fallback: Iterable[str], now: float) -> list[Alert]:
        """Site alerts firing or resolving (``inhibit.group_offline_share``)."""
        policy = self.rules.inhibit
        current = {g: a for g, a in self.sites.items() if a.key in firing}
        if policy.group_offline_share is None and not current:
            return []
        down = dict(offline)  # after a restart, presence is known again only from reports:
        for alert in firing.values():  # a firing offline alert still says "down"
            if alert.rule == OFFLINE_RULE:
                down.setdefault(alert.device, alert.started_at)
        members: dict[str, list[str]] = {name: [] for name in self.rules.groups}
        for device in self.fleet(fallback):
            for group in self.groups_of(device):
                members[group].append(device)
        counts = count_sites(members, members.__getitem__, down)
        return site_changes(policy, counts, current, now)

    def scene(self, offline: Mapping[str, float], firing: Mapping[str, Alert]) -> Scene:
        """The scene of the centre's current state."""
        return Scene(offline, frozenset(self.sites), FEED_KEY in firing)

    def preview(self, silence: Silence, firing: Iterable[Alert],
                pending: Iterable[PendingAlert], fallback: Iterable[str]) -> dict[str, Any]:
        """What ``silence`` would hide now: the firing and pending alerts it matches, and
        the share of the fleet's devices it covers (for some rule)."""
        book, matcher = self.silences, silence.matcher
        alerts = [a for a in firing
                  if matcher.matches(book.target(a.rule, a.device, a.severity, a.labels))]
        waiting = [p for p in pending
                   if matcher.matches(book.target(p.rule, p.device, p.severity))]
        fleet = self.fleet(fallback)
        rules = [r for r in (self.rules.offline, *self.rules.rules)
                 if matcher.rule is None or fnmatchcase(r.name, matcher.rule)]
        covered = sum(1 for device in fleet if self._covers(silence, device, rules))
        share = covered / len(fleet) if fleet else 0.0
        return {"firing": alerts, "pending": waiting, "devices": covered, "fleet": len(fleet),
                "share": round(share, 4), "confirm_share": book.confirm_share,
                "needs_confirm": share > book.confirm_share and not math.isclose(
                    share, book.confirm_share)}

    def _covers(self, silence: Silence, device: str, rules: Sequence[Rule]) -> bool:
        """True when ``silence`` would hide some alert of ``device`` (of ``rules``, the ones
        its rule glob admits: the walk stays small on a large fleet)."""
        if silence.matcher.device is not None and not fnmatchcase(device, silence.matcher.device):
            return False
        for rule in rules:
            params = self.rules.params(rule, device)
            labels = {**rule.labels, **self.silences.labels_of(device)}
            target = self.silences.target(rule.name, device, params.severity, labels)
            if silence.matcher.matches(target):
                return True
        return False
