"""Inhibition: alerts that say nothing new while a bigger one fires (docs/alerts.md).

From the rules file's ``inhibit:`` section (:class:`InhibitPolicy`):

- ``device_offline``: an offline device's own metric alerts are held (it cannot report them);
  its data counts as its return at once, so a backlog replayed on reconnect is sent.
- ``group_offline_share``: when MORE than this share of a group's devices (at least
  ``group_min_devices`` of them) are offline, ONE site alert fires (rule ``site_offline``,
  device = the group's name, label ``group``) and the per-device offline alerts of its
  members are held. It resolves when the share falls back to or below the setting.
- ``feed_lost``: while the backend's ``feed_lost`` alert fires, every device alert is held
  (device states are unknown; the feed monitor already keeps staleness from declaring
  anyone offline).

Pure: :func:`site_changes` computes the site alerts' transitions from who is offline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from edgefleet.notify.model import Alert

SITE_RULE = "site_offline"
SITE_SUMMARY = "site {group}: {offline} of {members} devices offline"


@dataclass(frozen=True, slots=True)
class InhibitPolicy:
    """The ``inhibit:`` section; ``group_offline_share`` None turns site alerts off."""

    device_offline: bool = True
    feed_lost: bool = True
    group_offline_share: float | None = None
    group_min_devices: int = 3
    site_severity: str = "critical"


@dataclass(frozen=True, slots=True)
class SiteCount:
    """How many of a group's devices are offline, and since when the first of them."""

    members: int
    offline: int
    since: float


def count_sites(groups: Iterable[str], members_of: Callable[[str], Iterable[str]],
                offline: Mapping[str, float]) -> dict[str, SiteCount]:
    """Per group: members, offline members and the earliest ``since`` among them."""
    out: dict[str, SiteCount] = {}
    for group in groups:
        members = list(dict.fromkeys(members_of(group)))
        down = [offline[d] for d in members if d in offline]
        out[group] = SiteCount(len(members), len(down), min(down, default=0.0))
    return out


def site_changes(policy: InhibitPolicy, counts: Mapping[str, SiteCount],
                 firing: Mapping[str, Alert], now: float) -> list[Alert]:
    """Site alerts that fire (share exceeded) or resolve (share back); ``firing`` maps a
    group to its firing site alert."""
    share = policy.group_offline_share
    events: list[Alert] = []
    for group, count in counts.items():
        over = (share is not None and count.members >= policy.group_min_devices
                and count.offline > share * count.members)
        current = firing.get(group)
        if over and current is None:
            events.append(_site("firing", policy, group, count, started=count.since, now=now))
        elif not over and current is not None:
            events.append(_site("resolved", policy, group, count,
                                started=current.started_at, now=now))
    for group, current in firing.items():
        if group not in counts:  # the group left the rules file
            events.append(_site("resolved", policy, group, SiteCount(0, 0, now),
                                started=current.started_at, now=now))
    return events


def _site(kind: str, policy: InhibitPolicy, group: str, count: SiteCount, *,
          started: float, now: float) -> Alert:
    share = policy.group_offline_share or 0.0
    summary = SITE_SUMMARY.format(group=group, offline=count.offline, members=count.members)
    return Alert.new(kind=kind, rule=SITE_RULE, device=group, instance=None,
                     severity=policy.site_severity,
                     value=round(count.offline / count.members, 3) if count.members else 0.0,
                     threshold=share, labels={"group": group}, summary=summary,
                     started_at=started, at=now)
