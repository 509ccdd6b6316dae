"""SIGKILL during a stream of alerts: every alert reaches Slack exactly once.

The real backend process is killed again and again while devices send samples that fire or
resolve an alert with every message. An alert's state and its outbox entry are written in the
same transaction as the batch, before the broker gets its PUBACK: a kill before the commit
loses all of it and the broker redelivers the batch (the engine makes the same events with
the same ids), a kill after it loses nothing. Kills land at random points of the write path,
so over the run they fall before, inside and after the batch transaction.

While the kills go on, Slack answers 429 (retry after 1 s): no message is ever between "Slack
has it" and "marked sent in the outbox". That window belongs to Slack (it has no idempotency
key) and no outbox can close it; keeping it shut makes a duplicate here a real defect of the
alert/outbox bookkeeping, not bad luck.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import pytest

from backendproc import BackendProc
from conftest import ClientFactory
from devices import Device
from edgefleet.dev.broker import Mosquitto
from edgefleet.notify.model import alert_key, event_id
from fakeslack import FakeSlack

pytestmark = [pytest.mark.slow, pytest.mark.fault]

RULES = """
version: 1
offline: {enabled: false}
rules:
  - {name: hot, metric: cpu.percent, op: ">", threshold: 90, clear: 80, for: 0s}
"""
DEVICES = 4
KILLS = 8
HIGH, LOW = 95.0, 50.0


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


class Stream:
    """Devices sending alternately HIGH and LOW: each sample fires or resolves ``hot``."""

    def __init__(self, devices: list[Device]) -> None:
        self.devices = devices
        self.sent: dict[str, list[tuple[int, float, float]]] = {d.name: [] for d in devices}
        self.stop = asyncio.Event()

    async def run(self) -> None:
        while not self.stop.is_set():
            await asyncio.gather(*(self._one(d) for d in self.devices))
            await asyncio.sleep(0.05)

    async def _one(self, device: Device) -> None:
        mine = self.sent[device.name]
        value = HIGH if len(mine) % 2 == 0 else LOW
        ts = round(time.time(), 3)
        mine.append((await device.sample(ts, cpu_percent=value), ts, value))

    async def replay(self) -> None:
        """What an agent does when PUBACKs were lost: send everything again."""
        for device in self.devices:
            for seq, ts, value in self.sent[device.name]:
                await device.resend(seq, ts, cpu_percent=value)

    def expected(self) -> set[str]:
        """The event id of every transition the samples make (``hot`` fires with for: 0s)."""
        ids = set()
        for name, samples in self.sent.items():
            key = alert_key("hot", name, None)
            for i, (_, ts, value) in enumerate(samples):
                started = ts if value == HIGH else samples[i - 1][1]
                ids.add(event_id(key, "firing" if value == HIGH else "resolved", started))
        return ids


def _backend(broker: Mosquitto, tmp_path: Path, slack: FakeSlack) -> BackendProc:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    return BackendProc(broker, tmp_path / "backend", rules_file=rules,
                       slack_webhook_url=slack.webhook_url, alert_budget_per_device=0,
                       alert_budget_per_rule=0, alert_group_window_s=0.2)


async def test_sigkill_during_alert_traffic_loses_and_repeats_no_alert(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    rng = random.Random(15)
    async with FakeSlack() as slack:
        slack.fail_with(429, retry_after=1)  # until recover(): nothing is marked sent yet
        be = _backend(broker, tmp_path, slack).start()
        be.wait_healthy()
        stream = Stream([await Device.connect(mqtt_client, f"dev-{i}") for i in range(DEVICES)])
        feeding = asyncio.create_task(stream.run())
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            be.stop(signal.SIGKILL)
            be = _backend(broker, tmp_path, slack).start()
            await asyncio.to_thread(be.wait_healthy)
        stream.stop.set()
        await feeding
        await stream.replay()
        slack.recover()
        expected = stream.expected()

        def hot_ids() -> list[str]:
            return [i for i in slack.event_ids() if i.startswith("hot|dev-")]

        async with asyncio.timeout(60):
            while not expected <= set(hot_ids()):
                await asyncio.sleep(0.2)
        late = await Device.connect(mqtt_client, "late")
        async with asyncio.timeout(30):  # a later alert: anything sent twice came before it
            while not any(i.startswith("hot|late||firing|") for i in slack.event_ids()):
                await late.sample(round(time.time(), 3), cpu_percent=HIGH)
                await asyncio.sleep(0.2)
        be.stop()
    ids = slack.event_ids()
    assert len(ids) == len(set(ids)), sorted(i for i in set(ids) if ids.count(i) > 1)
    assert set(hot_ids()) == expected  # none lost, none invented
    assert sum(len(s) for s in stream.sent.values()) == len(expected) > KILLS * DEVICES
    assert 429 in slack.statuses()
