"""The alert centre in-process, on a temporary fleet database: an alert fires, resolves, waits
as pending, expires; its state survives a restart; its outbox entry is committed with that
state, in the same transaction, or not at all. No network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.backend.store_backends import fleet_store

from edgefleet.backend.alerts.centre import AlertCenter
from edgefleet.backend.alerts.persist import DEVICE_PREFIX
from edgefleet.backend.alerts.rules import parse_rules
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.tx import StoreTx
from edgefleet.notify import Alert, AlertDispatcher, Outbox

RULES = parse_rules("""
version: 1
offline: {for: 0s, severity: critical}
rules:
  - {name: disk, metric: disk.used_percent, op: ">", threshold: 90, clear: 85, for: 0s,
     summary: "disk {instance} {value:.0f}% on {device}"}
  - {name: cpu, metric: cpu.percent, op: ">", threshold: 90, clear: 80, for: 5m,
     severity: critical}
""")
T0 = 1_800_000_000.0
WINDOW = 10.0


class Parts:
    """A store, an outbox on the same database, a dispatcher (not started) and a centre."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = fleet_store(path)
        self.outbox = Outbox(self.store.open_db())  # in the fleet database, as in the backend
        self.dispatcher = AlertDispatcher(outbox=self.outbox, notifier=None,
                                          group_window_s=WINDOW, repeat_interval_s=3600,
                                          clock=lambda: T0)
        self.centre = AlertCenter(RULES, self.store, self.dispatcher)

    def save(self) -> None:
        """What the backend's writer does with a batch: one transaction."""
        job = self.centre.take_save()
        assert job is not None
        self.store.add_samples([], also=job)

    def restart(self) -> Parts:
        self.close()
        return Parts(self.path)

    def close(self) -> None:
        self.outbox.close()
        self.store.close()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    made = Parts(tmp_path / "fleet.db")
    yield made
    made.close()


def sample(device: str, ts: float, **metrics: float) -> AcceptedSample:
    return AcceptedSample(device=device, seq=int(ts), ts=ts, metrics=metrics)


def disk(device: str, ts: float, value: float) -> AcceptedSample:
    return sample(device, ts, **{"disk.used_percent[/data]": value})


def test_an_alert_fires_and_the_page_sees_it(parts: Parts) -> None:
    [event] = parts.centre.on_samples([disk("d1", T0, 97.0)], T0)
    assert event == {
        "key": "disk|d1|/data", "rule": "disk", "device": "d1", "instance": "/data",
        "kind": "firing", "severity": "warning", "value": 97.0, "threshold": 90.0,
        "summary": "disk /data 97% on d1", "started_at": T0, "at": T0, "labels": {},
    }
    firing = parts.centre.firing["disk|d1|/data"]
    assert isinstance(firing, Alert) and firing.event_id == f"disk|d1|/data|firing|{T0:.3f}"
    assert parts.centre.severities() == {"d1": ["warning"]}
    assert parts.centre.public()["firing"] == [event]


def test_firing_alerts_are_listed_worst_first(parts: Parts) -> None:
    parts.centre.on_samples([disk("a", T0, 97.0)], T0)
    parts.centre.on_presence("b", online=False, since=T0 - 5, now=T0)  # offline: critical
    assert [a["key"] for a in parts.centre.public()["firing"]] == ["offline|b|", "disk|a|/data"]


def test_an_alert_resolves_only_below_its_clear_value(parts: Parts) -> None:
    parts.centre.on_samples([disk("d1", T0, 97.0)], T0)
    assert parts.centre.on_samples([disk("d1", T0 + 10, 88.0)], T0 + 10) == []  # hysteresis
    [resolved] = parts.centre.on_samples([disk("d1", T0 + 20, 80.0)], T0 + 20)
    assert (resolved["kind"], resolved["started_at"], resolved["at"]) == ("resolved", T0, T0 + 20)
    assert parts.centre.firing == {} and parts.centre.severities() == {}
    assert [a["kind"] for a in parts.centre.public()["recent"]] == ["resolved", "firing"]


def test_a_condition_waits_as_pending_for_its_for_then_fires(parts: Parts) -> None:
    assert parts.centre.on_samples([sample("d1", T0, **{"cpu.percent": 95.0})], T0) == []
    [pending] = parts.centre.pending_public()
    assert (pending["key"], pending["since"], pending["for_s"]) == ("cpu|d1|", T0, 300.0)
    [fired] = parts.centre.on_samples([sample("d1", T0 + 300, **{"cpu.percent": 96.0})],
                                      T0 + 300)
    assert (fired["kind"], fired["severity"], fired["started_at"]) == ("firing", "critical", T0)
    assert parts.centre.pending_public() == []


def test_idle_keys_expire_and_firing_ones_stay(parts: Parts) -> None:
    parts.centre.on_samples([disk("d1", T0, 97.0), sample("d1", T0, **{"cpu.percent": 10.0})],
                            T0)
    assert parts.centre.expire(T0 + 3600) == 0  # an hour without samples is still allowed
    assert parts.centre.expire(T0 + 3601) == 1 and parts.centre.expired_total == 1
    assert parts.centre.state.get("cpu", "d1") is None
    assert "disk|d1|/data" in parts.centre.firing


def test_state_and_outbox_entries_survive_a_restart(parts: Parts) -> None:
    parts.centre.on_samples([disk("d1", T0, 97.0), disk("d2", T0, 97.0),
                             sample("d3", T0, **{"cpu.percent": 95.0})], T0)
    parts.centre.on_samples([disk("d2", T0 + 5, 50.0)], T0 + 5)
    firing, recent = dict(parts.centre.firing), list(parts.centre.recent)
    pending = parts.centre.pending_public()
    parts.save()
    parts = parts.restart()
    assert parts.centre.firing == firing  # the same Alert values, event ids included
    assert list(parts.centre.recent) == recent and parts.centre.pending_public() == pending
    due = parts.outbox.due(T0 + WINDOW)
    assert sorted(e.alert.event_id for e in due) == sorted(a.event_id for a in recent)
    assert {e.due_at for e in due} == {T0 + WINDOW}  # one grouping window after they came
    # the restored alert resolves once, with the id of the event that fired it
    [resolved] = parts.centre.on_samples([disk("d1", T0 + 30, 10.0)], T0 + 30)
    assert resolved["started_at"] == firing["disk|d1|/data"].started_at
    parts.close()


def test_no_outbox_entry_without_its_state_and_no_state_without_its_entry(parts: Parts) -> None:
    [event] = parts.centre.on_samples([disk("d1", T0, 97.0)], T0)
    job = parts.centre.take_save()
    assert job is not None

    def fails_after_saving(tx: StoreTx) -> None:
        job(tx)
        raise OSError("disk full")  # anything later in the batch transaction

    with pytest.raises(OSError, match="disk full"):
        parts.store.add_samples([], also=fails_after_saving)
    assert parts.outbox.counts() == {}  # rolled back together
    assert parts.store.get_state(DEVICE_PREFIX + "d1") is None
    assert list(parts.centre.outgoing) == [f"{event['key']}|firing|{T0:.3f}"]  # kept
    parts.save()  # the next save carries the event again
    assert parts.outbox.counts() == {"pending": 1} and parts.centre.outgoing == {}
    assert parts.store.get_state(DEVICE_PREFIX + "d1") is not None
    assert parts.centre.take_save() is None  # nothing left to save


def test_a_reminder_goes_to_the_outbox_with_the_next_save(parts: Parts) -> None:
    parts.centre.on_samples([disk("d1", T0 - 3600, 97.0)], T0 - 3600)
    parts.save()
    parts.centre.tick(T0)  # fired an hour ago (repeat interval 1 h): reminder 1 is due
    parts.save()
    ids = sorted(e.alert.event_id for e in parts.outbox.due(T0 + WINDOW))
    assert ids == [f"disk|d1|/data|firing|{T0 - 3600:.3f}",
                   f"disk|d1|/data|firing|{T0 - 3600:.3f}#repeat-1"]
