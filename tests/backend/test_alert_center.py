"""The alert centre under hostile cardinality: batch evaluation, expiry, per-device saves,
migration from the old single blob, and pending alerts in ``GET /api/alerts``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.backend.store_backends import fleet_store

from edgefleet.backend.alerts.centre import AlertCenter
from edgefleet.backend.alerts.engine import (
    AlertState,
    LiveAlertState,
    evaluate,
    evaluate_batch,
    evaluate_changes,
    expire,
)
from edgefleet.backend.alerts.persist import DEVICE_PREFIX, DEVICES, OLD_FIRING, OLD_STATE
from edgefleet.backend.alerts.rules import RuleSet, parse_rules
from edgefleet.backend.records import AcceptedSample
from edgefleet.backend.store.contract import FleetStoreContract
from edgefleet.backend.store.tx import StoreTx
from edgefleet.notify import AlertDispatcher, Outbox

RULES = parse_rules("""
version: 1
offline: {for: 0s}
rules:
  - {name: disk, metric: disk.used_percent, op: ">", threshold: 90, clear: 85, for: 0s}
  - {name: cpu, metric: cpu.percent, op: ">", threshold: 90, clear: 80, for: 5m,
     severity: critical, summary: "CPU {value:.0f}% on {device} ({kind})"}
""")
T0 = 1_800_000_000.0


class CountingStore:
    """A real store (of this run's kind: ``fleet_store``) that remembers the state names
    written in its transactions."""

    def __init__(self, path: Path) -> None:
        self.inner = fleet_store(path)
        self.puts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, job: Callable[[StoreTx], None]) -> None:
        """Run a save in one batch transaction, as the backend's writer does."""
        self.inner.add_samples([], also=lambda tx: job(CountingTx(tx, self.puts)))


class CountingTx(StoreTx):
    """The store's transaction, counting ``put_state`` calls."""

    def __init__(self, tx: StoreTx, puts: list[str]) -> None:
        super().__init__(tx.conn)
        self.tx, self.puts = tx, puts

    def put_state(self, name: str, text: str) -> None:
        self.puts.append(name)
        self.tx.put_state(name, text)

    def after_commit(self, work: Callable[[], None]) -> None:
        self.tx.after_commit(work)


class CountingConds(Mapping[Any, Any]):
    """A device's conditions that count how often something walks over all of them."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self.data, self.walks = data, 0

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[Any]:
        self.walks += 1
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def sample(device: str, ts: float, **metrics: float) -> AcceptedSample:
    return AcceptedSample(device=device, seq=int(ts), ts=ts, metrics=metrics)


def disks(device: str, ts: float, names: range, value: float) -> AcceptedSample:
    metrics = {f"disk.used_percent[/m{i}]": value for i in names}
    return AcceptedSample(device=device, seq=int(ts), ts=ts, metrics=metrics)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    s = CountingStore(tmp_path / "fleet.db")
    yield s
    s.close()


@pytest.fixture
def dispatcher(store: CountingStore) -> Iterator[AlertDispatcher]:
    d = AlertDispatcher(outbox=Outbox(store.open_db()), notifier=None)  # in the fleet db
    yield d
    d.outbox.close()


def center(store: FleetStoreContract, dispatcher: AlertDispatcher, rules: RuleSet = RULES) -> AlertCenter:
    return AlertCenter(rules, store, dispatcher)


def save(c: AlertCenter) -> None:
    job = c.take_save()
    assert job is not None
    assert isinstance(c.store, CountingStore)
    c.store.run(job)


def test_a_batch_walks_a_devices_conditions_once_not_per_sample() -> None:
    state, _ = evaluate(RULES, AlertState(), "bad", T0, {f"disk.used_percent[/m{i}]": 10.0
                                                          for i in range(500)}, T0)
    conds = CountingConds(dict(state.device("bad")))
    state = state.with_devices({"bad": conds})
    batch = [("bad", T0 + i, {f"disk.used_percent[/n{i}-{j}]": 10.0 for j in range(50)})
             for i in range(1, 41)]
    new, _ = evaluate_batch(RULES, state, batch, T0 + 60)
    assert conds.walks == 1  # one copy for 40 samples, not 40 copies
    assert len(new.device("bad")) == 500 + 40 * 50
    assert len(state.device("bad")) == 500  # the old state is untouched


def test_the_centre_never_walks_a_devices_conditions_to_evaluate() -> None:
    state, _ = evaluate(RULES, AlertState(), "bad", T0, {f"disk.used_percent[/m{i}]": 10.0
                                                          for i in range(500)}, T0)
    conds = CountingConds(dict(state.device("bad")))
    live = LiveAlertState(AlertState().with_devices({"bad": dict(conds.data)}))
    view = AlertState().with_devices({"bad": conds})
    batch = [("bad", T0 + i, {"disk.used_percent[/m1]": 99.0, f"disk.used_percent[/n{i}]": 1.0})
             for i in range(1, 41)]
    changes, events = evaluate_changes(RULES, view, batch, T0 + 60)
    assert conds.walks == 0  # the cost follows the samples, not the device's 500 keys
    assert len(changes["bad"]) == 41 and [e.instance for e in events] == ["/m1"]
    live.apply(changes)
    assert len(live) == 540 and set(live.active("bad")) == {("disk", "/m1")}


def test_other_devices_are_shared_not_copied() -> None:
    state, _ = evaluate(RULES, AlertState(), "good", T0, {"cpu.percent": 10.0}, T0)
    new, _ = evaluate_batch(RULES, state, [("bad", T0, {"disk.used_percent[/x]": 1.0})], T0)
    assert new.device("good") is state.device("good")


def test_keys_expire_unless_firing() -> None:
    state, events = evaluate(RULES, AlertState(), "d", T0, {
        "disk.used_percent[/full]": 99.0, "disk.used_percent[/ok]": 10.0, "cpu.percent": 95.0,
    }, T0)
    assert [e.instance for e in events] == ["/full"]
    # cpu's `for` is 5 min: kept for max(10 x 5 min, 1 h) = 1 h; disk (for 0) for 1 h
    same, gone = expire(RULES, state, T0 + 3600)
    assert (gone, same) == (0, state)
    later, gone = expire(RULES, state, T0 + 3601)
    assert gone == 2
    assert later.get("disk", "d", "/full") is not None  # firing: kept
    assert later.get("disk", "d", "/ok") is None and later.get("cpu", "d") is None


def test_long_for_keeps_a_pending_key_ten_times_as_long() -> None:
    rules = parse_rules("version: 1\nrules: [{name: slow, metric: cpu.percent, op: '>', "
                        "threshold: 1, for: 2h}]\n")
    state, _ = evaluate(rules, AlertState(), "d", T0, {"cpu.percent": 50.0}, T0)
    assert expire(rules, state, T0 + 20 * 3600)[1] == 0
    assert expire(rules, state, T0 + 20 * 3600 + 1)[1] == 1


def test_center_expires_on_tick(store: CountingStore, dispatcher: AlertDispatcher) -> None:
    c = center(store, dispatcher)
    c.on_samples([disks("bad", T0, range(300), 10.0)], T0)
    assert len(c.state) == 300
    c._expired_at = -1e9
    c.tick(T0 + 3601)
    assert len(c.state) == 0 and c.expired_total == 300


def test_only_changed_devices_are_saved(store: CountingStore, dispatcher: AlertDispatcher) -> None:
    c = center(store, dispatcher)
    healthy = [sample(f"ok-{i}", T0, **{"cpu.percent": 10.0}) for i in range(20)]
    c.on_samples([*healthy, disks("bad", T0, range(500), 99.0)], T0)  # 500 firing
    save(c)
    assert set(store.puts) == {DEVICES, DEVICE_PREFIX + "bad", "alerts.recent"}
    store.puts.clear()
    # the next round: healthy devices again, the hostile one with 500 new names (idle)
    healthy = [sample(f"ok-{i}", T0 + 10, **{"cpu.percent": 11.0}) for i in range(20)]
    c.on_samples([*healthy, disks("bad", T0 + 10, range(500, 1000), 10.0)], T0 + 10)
    c._saved_at = -1e9
    job = c.take_save()
    assert job is not None
    store.run(job)
    assert store.puts == []  # nothing that matters after a restart changed
    # one firing disk resolves: only that device's document is written, once
    c.on_samples([sample("bad", T0 + 20, **{"disk.used_percent[/m0]": 10.0})], T0 + 20)
    save(c)
    assert sorted(store.puts) == [DEVICE_PREFIX + "bad", "alerts.recent"]
    doc = json.loads(store.get_state(DEVICE_PREFIX + "bad") or "")
    assert len(doc["alerts"]) == 499 and len(doc["firing"]) == 499


def test_restart_restores_firing_and_pending(
    store: CountingStore, dispatcher: AlertDispatcher
) -> None:
    c = center(store, dispatcher)
    [fired] = c.on_samples([sample("a", T0, **{"cpu.percent": 95.0,
                                               "disk.used_percent[/]": 99.0})], T0)
    save(c)
    again = center(store, dispatcher)
    assert set(again.firing) == {"disk|a|/"}
    assert [p["key"] for p in again.public()["pending"]] == ["cpu|a|"]
    # the restored alert resolves with the same event id, and does not fire twice
    events = again.on_samples([sample("a", T0 + 400, **{"cpu.percent": 96.0,
                                                        "disk.used_percent[/]": 50.0})], T0 + 400)
    assert sorted((e["kind"], e["key"], e["started_at"]) for e in events) == [
        ("firing", "cpu|a|", T0), ("resolved", "disk|a|/", fired["started_at"])]


def test_old_single_blob_is_migrated(store: CountingStore, dispatcher: AlertDispatcher) -> None:
    old, events = evaluate(RULES, AlertState(), "a", T0, {"disk.used_percent[/]": 99.0,
                                                          "cpu.percent": 95.0}, T0)
    firing = {e.key: e.to_dict() for e in events}
    store.put_state(OLD_STATE, old.to_json())
    store.put_state(OLD_FIRING, json.dumps(firing))
    c = center(store, dispatcher)
    assert set(c.firing) == {"disk|a|/"}
    assert [p["key"] for p in c.public()["pending"]] == ["cpu|a|"]
    save(c)
    assert store.get_state(OLD_STATE) == "" and store.get_state(OLD_FIRING) == ""
    assert json.loads(store.get_state(DEVICES) or "") == ["a"]
    again = center(store, dispatcher)
    assert set(again.firing) == {"disk|a|/"}
    assert again.state.get("cpu", "a") == c.state.get("cpu", "a")


def test_an_unreadable_device_document_loses_only_that_device(
    store: CountingStore, dispatcher: AlertDispatcher
) -> None:
    c = center(store, dispatcher)
    c.on_samples([sample("a", T0, **{"disk.used_percent[/]": 99.0}),
                  sample("b", T0, **{"disk.used_percent[/]": 99.0})], T0)
    save(c)
    store.put_state(DEVICE_PREFIX + "a", "{not json")
    again = center(store, dispatcher)
    assert set(again.firing) == {"disk|b|/"}


def test_pending_lists_conditions_in_their_for_window_worst_first(
    store: CountingStore, dispatcher: AlertDispatcher
) -> None:
    rules = parse_rules("""
version: 1
offline: {for: 2m}
rules:
  - {name: warm, metric: cpu.percent, op: ">", threshold: 50, for: 10m, severity: info}
  - {name: hot, metric: cpu.percent, op: ">", threshold: 90, for: 5m, severity: critical,
     summary: "CPU {value:.0f}% on {device} ({kind})"}
""")
    c = center(store, dispatcher, rules)
    c.on_samples([sample("a", T0, **{"cpu.percent": 95.0}),
                  sample("b", T0 - 30, **{"cpu.percent": 96.0})], T0)
    c.on_presence("c", online=False, since=T0 - 10, now=T0)
    body = c.public()
    assert [p["key"] for p in body["pending"]] == [
        "hot|b|", "offline|c|", "hot|a|", "warm|b|", "warm|a|"]
    first = body["pending"][0]
    assert first == {
        "key": "hot|b|", "rule": "hot", "device": "b", "instance": None,
        "severity": "critical", "value": 96.0, "threshold": 90.0, "since": T0 - 30,
        "for_s": 300.0, "summary": "CPU 96% on b (pending)",
    }
    assert body["pending_total"] == 5 and body["firing"] == []
    c.on_samples([sample("a", T0 + 300, **{"cpu.percent": 95.0})], T0 + 300)
    keys = [p["key"] for p in c.public()["pending"]]
    assert "hot|a|" not in keys and "hot|a|" in c.firing  # fired: no longer pending


def test_an_older_save_finishing_last_does_not_overwrite_a_newer_one(
    store: CountingStore, dispatcher: AlertDispatcher
) -> None:
    c = center(store, dispatcher)
    c.on_samples([sample("a", T0, **{"disk.used_percent[/]": 99.0})], T0)
    older = c.take_save()
    c.on_samples([sample("a", T0 + 10, **{"disk.used_percent[/]": 10.0})], T0 + 10)
    newer = c.take_save()
    assert older is not None and newer is not None
    store.run(newer)  # the ingest and tick loops save from worker threads: order is not
    store.run(older)  # guaranteed
    again = center(store, dispatcher)
    assert again.firing == {} and again.public()["pending"] == []
    assert [e.kind for e in again.recent] == ["resolved", "firing"]
