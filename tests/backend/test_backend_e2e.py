"""The backend's promises against a real Mosquitto and a local Slack stand-in."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from backendproc import BackendProc
from conftest import ClientFactory
from devices import Device, metrics_payload
from edgefleet.dev.broker import Mosquitto
from edgefleet.wire.messages import metrics_topic
from fakeslack import FakeSlack

pytestmark = [pytest.mark.slow]

RULES = """
version: 1
offline: {enabled: true, severity: critical, for: 0s}
rules:
  - name: high_cpu
    metric: cpu.percent
    op: ">"
    threshold: 90
    clear: 80
    for: 2s
    severity: warning
"""


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def _backend(broker: Mosquitto, tmp_path: Path, slack: FakeSlack | None, **kw: Any) -> BackendProc:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    if slack is not None:
        kw.setdefault("slack_webhook_url", slack.webhook_url)
    return BackendProc(broker, tmp_path / "backend", rules_file=rules, **kw)


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in /metrics")


async def _poll(check: Any, timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await asyncio.to_thread(check)
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(every)


def _bad_payloads(device: str, other: str, n: int, rng: random.Random) -> dict[str, list[bytes]]:
    """A corpus of refused messages per reason, all sent by ``device`` on its own topic."""
    good = json.loads(metrics_payload(device, 0, time.time(), {"cpu.percent": 1.0}))
    out: dict[str, list[bytes]] = {"malformed": [], "unknown_version": [], "spoofed": [],
                                   "oversized": []}
    for i in range(n):
        kind = ("malformed", "malformed", "unknown_version", "spoofed")[i % 4]
        doc = json.loads(json.dumps(good))
        if kind == "unknown_version":
            doc["v"] = rng.choice([0, 2, "1", None, 99])
        elif kind == "spoofed":
            doc["device_id"] = other
        else:
            doc = _broken(doc, rng)
        out[kind].append(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    out["oversized"] = [json.dumps({**good, "pad": "x" * 140_000}).encode() for _ in range(5)]
    return out


def _broken(doc: dict[str, Any], rng: random.Random) -> dict[str, Any] | bytes:
    choice = rng.randrange(8)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if choice == 1:
        return json.dumps(doc).encode()[: rng.randrange(1, 60)]
    if choice == 2:
        doc["samples"] = []
    elif choice == 3:
        doc["samples"][0]["seq"] = rng.choice([-1, "x", None, 1.5])
    elif choice == 4:
        doc["samples"][0]["metrics"] = {"Bad Key!": 1}
    elif choice == 5:
        doc["samples"][0]["ts"] = rng.choice(["now", -5, None])
    elif choice == 6:
        del doc["stream"]
    else:
        return b"[1, 2, 3]"
    return doc


async def test_ten_thousand_bad_payloads_are_counted_and_good_traffic_flows(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    be = _backend(broker, tmp_path, None).start()
    be.wait_healthy()
    bad = await Device.connect(mqtt_client, "dev-bad")
    good = await Device.connect(mqtt_client, "dev-good")
    corpus = _bad_payloads("dev-bad", "dev-good", 10_000, random.Random(7))
    payloads = [p for ps in corpus.values() for p in ps]
    random.Random(1).shuffle(payloads)
    topic = metrics_topic("dev-bad")
    sent_good = 0
    for i in range(0, len(payloads), 200):
        await asyncio.gather(*(bad.client.publish(topic, p) for p in payloads[i : i + 200]))
        await good.sample(time.time(), cpu_percent=10.0)
        sent_good += 1
    def counted() -> bool:
        _, text = be.get("/metrics")
        return _metric(text, "edgefleet_ingest_messages_total") >= len(payloads) + sent_good
    assert await _poll(counted, 60), be.log_text()[-2000:]
    _, text = be.get("/metrics")
    for reason, items in corpus.items():
        assert _metric(text, "edgefleet_ingest_rejected_total", f'{{reason="{reason}"}}') == len(items)
    assert _metric(text, "edgefleet_ingest_samples_total") == sent_good
    status, body = be.get("/api/devices/dev-good")
    assert status == 200 and body["device"]["online"]
    assert be.proc is not None and be.proc.poll() is None
    log_lines = [ln for ln in be.log_text().splitlines() if "rejected" in ln]
    assert len(log_lines) < 100  # rate-limited, not one line per bad message
    be.stop()


async def test_cpu_alert_fires_once_resolves_once_and_flapping_is_quiet(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    """Then a second device runs hot: its alert is the last message, so every message
    dev-1's flapping could have caused was delivered before it (no fixed sleep)."""
    async with FakeSlack() as slack:
        be = _backend(broker, tmp_path, slack, alert_group_window_s=1).start()
        be.wait_healthy()
        dev = await Device.connect(mqtt_client, "dev-1")
        other = await Device.connect(mqtt_client, "dev-2")
        await dev.online(time.time(), interval_s=0.2)
        pattern = [50.0] * 5 + [95.0] * 15 + [85.0, 95.0] * 10 + [50.0] * 5 + [75.0, 95.0] * 10
        for value in pattern:
            await dev.sample(time.time(), cpu_percent=value)
            await asyncio.sleep(0.2)
        async with asyncio.timeout(30):
            while not any(i.startswith("high_cpu|dev-2||firing|") for i in slack.event_ids()):
                await asyncio.gather(dev.sample(time.time(), cpu_percent=50.0),
                                     other.sample(time.time(), cpu_percent=95.0))
                await asyncio.sleep(0.2)
        be.stop()
    texts = [m["text"] for m in slack.messages]
    ids = slack.event_ids()
    assert len(ids) == len(set(ids)) == len(texts) == 3, (ids, texts)
    assert ids[0].startswith("high_cpu|dev-1||firing|"), ids
    assert texts[0].startswith("[WARNING] "), texts
    assert ids[1].startswith("high_cpu|dev-1||resolved|"), ids
    assert texts[1].startswith("[RESOLVED] "), texts
    assert ids[2].startswith("high_cpu|dev-2||firing|"), ids


async def test_fifty_devices_going_silent_make_one_grouped_message(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    """50 devices go silent while one keeps talking (the feed is fine): one grouped message
    with the 50 offline alerts, and nothing about the feed."""
    async with FakeSlack() as slack:
        be = _backend(broker, tmp_path, slack, stale_min_s=1, alert_group_window_s=3).start()
        be.wait_healthy()
        names = [f"node-{i:02d}" for i in range(50)]
        devs = await asyncio.gather(*(Device.connect(mqtt_client, n) for n in names))
        keeper = await Device.connect(mqtt_client, "keeper")
        now = time.time()
        await asyncio.gather(*(d.online(now, interval_s=0.3) for d in [*devs, keeper]))
        for _ in range(3):
            await asyncio.gather(*(d.sample(time.time(), cpu_percent=10.0)
                                   for d in [*devs, keeper]))
            await asyncio.sleep(0.3)

        cpu = [10.0]

        async def keep_talking() -> None:
            while True:
                await keeper.sample(time.time(), cpu_percent=cpu[0])
                await asyncio.sleep(0.3)

        def keeper_hot() -> bool:
            return any(i.startswith("high_cpu|keeper||firing|") for i in slack.event_ids())

        talking = asyncio.create_task(keep_talking())
        try:  # silence: no more data from any of the 50
            await slack.wait_for_messages(1, within_s=20)
            cpu[0] = 95.0  # then the keeper runs hot: its alert is the last message
            async with asyncio.timeout(30):
                while not keeper_hot():
                    await slack.wait_for_messages(len(slack.messages) + 1, within_s=30)
        finally:
            talking.cancel()
        be.stop()
    assert len(slack.messages) == 2, [m["text"] for m in slack.messages]
    text = json.dumps(slack.messages[0]["blocks"])
    assert all(n in text for n in names)
    ids = slack.event_ids()
    assert ids[-1].startswith("high_cpu|keeper||firing|"), ids
    ids = ids[:-1]
    assert len(set(ids)) == 50 and all(i.startswith("offline|node-") for i in ids), ids


async def test_whole_fleet_silent_is_one_feed_lost_alert_not_offline_alerts(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    """Every device goes silent at once with the backend's link up: the backend cannot tell
    a dead fleet from a dead feed, so it says "feed lost" once, pages nobody about devices,
    answers /healthz 503, and resolves the alert when the fleet is heard again."""
    async with FakeSlack() as slack:
        be = _backend(broker, tmp_path, slack, stale_min_s=1, feed_silence_min_s=2,
                      feed_alert_after_s=3).start()
        be.wait_healthy()
        devs = await asyncio.gather(*(Device.connect(mqtt_client, f"node-{i}") for i in range(5)))
        await asyncio.gather(*(d.online(time.time(), interval_s=0.3) for d in devs))
        for _ in range(3):
            await asyncio.gather(*(d.sample(time.time(), cpu_percent=10.0) for d in devs))
            await asyncio.sleep(0.3)
        await slack.wait_for_messages(1, within_s=20)
        status, health = be.get("/healthz")
        _, summary = be.get("/api/devices")
        _, metrics = be.get("/metrics")

        async def talk() -> None:
            while True:
                await asyncio.gather(*(d.sample(time.time(), cpu_percent=10.0) for d in devs))
                await asyncio.sleep(0.3)

        talking = asyncio.create_task(talk())  # the fleet is heard again
        try:
            await slack.wait_for_messages(2, within_s=20)
            status_after, _ = be.get("/healthz")
        finally:
            talking.cancel()
        be.stop()
    assert status == 503 and health["status"] == "degraded", health
    assert health["feed"]["state"] == "lost" and health["feed"]["connected"] is True
    assert "no device heard" in health["reason"]
    assert summary["summary"]["feed"]["state"] == "lost"
    assert _metric(metrics, "edgefleet_feed_up") == 0
    assert all(d["online"] for d in summary["devices"])
    ids = slack.event_ids()
    assert len(ids) == 2 and all(i.startswith("feed_lost|edgefleet-backend||") for i in ids), ids
    assert "firing" in ids[0] and "resolved" in ids[1]
    assert "edgefleet lost its feed" in slack.messages[0]["text"]
    assert status_after == 200


@pytest.mark.fault
async def test_slack_outage_of_two_minutes_with_a_backend_restart_delivers_each_alert_once(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    async with FakeSlack() as slack:
        slack.fail_with(500, duration=60)
        slack.fail_with(429, duration=60, retry_after=3)
        started = time.monotonic()
        be = _backend(broker, tmp_path, slack).start()
        be.wait_healthy()
        devs = [await Device.connect(mqtt_client, f"hot-{i}") for i in range(4)]
        for round_ in range(2):  # each device fires and resolves, twice per backend life
            for hot in (True, False):
                for _ in range(14):
                    await asyncio.gather(*(d.sample(time.time(), cpu_percent=95.0 if hot else 40.0)
                                           for d in devs))
                    await asyncio.sleep(0.2)
            if round_ == 0:
                be.stop(signal.SIGTERM)
                be = _backend(broker, tmp_path, slack).start()
                be.wait_healthy()
        expected = 4 * 2 * 2  # devices x (firing, resolved) x rounds
        await asyncio.sleep(max(0.0, 125 - (time.monotonic() - started)))  # outage ends
        def cpu_ids() -> list[str]:  # the devices also go offline later; count CPU alerts
            return [i for i in slack.event_ids() if i.startswith("high_cpu|hot-")]

        async with asyncio.timeout(60):
            while len(set(cpu_ids())) < expected:
                await asyncio.sleep(0.5)
        late = await Device.connect(mqtt_client, "late")
        async with asyncio.timeout(30):  # a later alert: anything sent twice came before it
            while not any(i.startswith("high_cpu|late||firing|") for i in slack.event_ids()):
                await late.sample(time.time(), cpu_percent=95.0)
                await asyncio.sleep(0.2)
        be.stop()
    ids = slack.event_ids()
    assert len(ids) == len(set(ids)), ids  # nothing delivered twice
    assert len(cpu_ids()) == expected, ids
    assert 500 in slack.statuses() and 429 in slack.statuses()


@pytest.mark.fault
async def test_sigkill_keeps_history_alert_state_and_dedup(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    async with FakeSlack() as slack:
        be = _backend(broker, tmp_path, slack).start()
        be.wait_healthy()
        dev = await Device.connect(mqtt_client, "dev-1")
        sent: list[tuple[int, float, float]] = []
        for value in [95.0] * 16:
            ts = time.time()
            sent.append((await dev.sample(ts, cpu_percent=value), ts, value))
            await asyncio.sleep(0.2)
        await slack.wait_for_messages(1, within_s=10)
        be.stop(signal.SIGKILL)
        be = _backend(broker, tmp_path, slack).start()
        be.wait_healthy()
        for seq, ts, value in sent:  # the agent replays everything (e.g. lost PUBACKs)
            await dev.resend(seq, ts, cpu_percent=value)
        for _ in range(10):  # and the condition still holds with fresh samples
            await dev.sample(time.time(), cpu_percent=96.0)
            await asyncio.sleep(0.2)
        other, extra = await Device.connect(mqtt_client, "dev-2"), 0
        async with asyncio.timeout(30):  # a later alert: all before it was delivered
            while not any(i.startswith("high_cpu|dev-2||firing|") for i in slack.event_ids()):
                await asyncio.gather(dev.sample(time.time(), cpu_percent=96.0),
                                     other.sample(time.time(), cpu_percent=95.0))
                await asyncio.sleep(0.2)
                extra += 1
        _, text = be.get("/metrics")
        status, detail = be.get("/api/devices/dev-1?points=1000")
        _, alerts = be.get("/api/alerts")
        be.stop()
    assert len(slack.messages) == 2, slack.event_ids()  # nothing about dev-1 sent again
    assert _metric(text, "edgefleet_ingest_duplicates_total") == len(sent)
    assert status == 200
    assert len(detail["history"]["t"]) == len(sent) + 10 + extra
    assert sorted(a["device"] for a in alerts["firing"]) == ["dev-1", "dev-2"]
