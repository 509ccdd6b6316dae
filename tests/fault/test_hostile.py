"""One hostile device against the fleet: whatever it sends, the other 20 devices lose nothing.

A device with a real identity (``evil-1``, its own certificate, publishing only under its own
topic as the ACL allows) sends every class of valid-looking but hostile input the issue lists
while 20 well-behaved devices publish: 18 simulated ones with scripted alert spikes and 2 real
agent processes (the fault suite's harness, ``system.py``, checks every one of their samples
and alerts against the ground truth):

- seq at the edges of the type on two streams (0 and 2^63-1), and huge jumps;
- two streams interleaved (two agents under one name);
- stream churn: a new stream id in every message;
- 100,000 distinct metric names (200 messages of 500 new names);
- Slack mention and link syntax in instance names, above an alert threshold;
- string-typed numbers, a boolean version.

Then: every sample of the 20 is stored, their alerts fire and resolve exactly once, the
backend stays under a stated RSS bound, every refusal is counted by its reason, the Slack
payloads carry the hostile names escaped only, and the alternating streams are flagged as an
identity conflict.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from system import AgentSpec, System, SystemSpec, metric_value

from edgefleet.dev.broker import Mosquitto
from edgefleet.sim import ScriptedEvent
from edgefleet.transport.mqtt import MqttClient, MqttConfig
from edgefleet.wire.messages import metrics_topic

pytestmark = [pytest.mark.fault, pytest.mark.slow]

EVIL = "evil-1"
RSS_BOUND_MIB = 150  # measured: 80 MiB at the end of this run (20 devices idle near 65 MiB)
NAMES = 100_000
NAMES_PER_MESSAGE = 500
STREAM_CHURN = 500
MENTIONS = ("<!channel>", "<!here>", "<@U123>", "<https://x|y>", "a&b")
# The bounds this test runs with (settings), so the expected refusals are exact.
BOUNDS = {"max_keys_per_device": 1000, "max_instances_per_family": 200}

DISK_RULE = """
  - name: evil_disk
    metric: disk.used_percent
    op: ">"
    threshold: 90
    clear: 80
    for: 0s
    overrides: [{devices: ["sim-*", "agent-*"], enabled: false}]
"""


def spike(device: int, at_s: float, duration_s: float, kind: str = "cpu") -> ScriptedEvent:
    return ScriptedEvent(device=device, kind="spike", at_s=at_s, duration_s=duration_s,
                         spike_kind=kind)


class Hostile:
    """The hostile device: raw JSON documents, published QoS 1 from its own identity."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self.topic = metrics_topic(EVIL)
        self.sent: dict[str, int] = {}

    @classmethod
    async def connect(cls, broker: Mosquitto) -> Hostile:
        cert, key, ca = broker.identity(EVIL)
        client = MqttClient(MqttConfig(
            endpoint="127.0.0.1", port=broker.port, cert_file=cert, key_file=key, ca_file=ca,
            client_id=EVIL, aws_limits=False, min_reconnect_ms=100, max_reconnect_ms=1000,
        ))
        client.start()
        await asyncio.wait_for(client.connected.wait(), 15)
        return cls(client)

    async def send(self, what: str, doc: dict[str, Any]) -> None:
        code = await self.client.publish(self.topic, json.dumps(doc).encode())
        assert code < 128, f"broker refused {what}: {code}"
        self.sent[what] = self.sent.get(what, 0) + 1

    @staticmethod
    def doc(stream: str, seq: Any, metrics: dict[str, Any], now: float, **over: Any) -> dict[str, Any]:
        doc = {"v": 1, "device_id": EVIL, "stream": stream, "sent_at": now,
               "samples": [{"seq": seq, "ts": now, "metrics": metrics}]}
        doc.update(over)
        return doc

    async def run(self, now: Any) -> None:
        base = {"cpu.percent": 10.0}
        # mention and link syntax in instance names, above the threshold: alerts fire
        mentions = {f"disk.used_percent[{m}]": 99.0 for m in MENTIONS}
        for i in range(3):
            await self.send("mentions", self.doc("calm", i, {**base, **mentions}, now()))
        # seq at the edges of the type, on two streams, alternating
        for stream, seq in (("edge-a", 0), ("edge-a", 2**63 - 1), ("edge-b", 0),
                            ("edge-b", 2**63 - 1), ("edge-a", 1)):
            await self.send("seq_edges", self.doc(stream, seq, base, now()))
        # two streams interleaved with rising seqs: two agents under one name
        for seq in range(6):
            for stream in ("twin-a", "twin-b"):
                await self.send("alternating", self.doc(stream, seq, base, now()))
        # huge jumps forward and back
        for seq in (0, 1, 10**15, 10**15 + 1, 2):
            await self.send("seq_jumps", self.doc("jumpy", seq, base, now()))
        # stream churn
        for i in range(STREAM_CHURN):
            await self.send("stream_churn", self.doc(f"churn-{i}", 0, base, now()))
        # string-typed numbers and a boolean version: refused as malformed
        await self.send("strings", self.doc("calm", "13", base, now()))
        await self.send("strings", self.doc("calm", 14, {"cpu.percent": "5"}, now()))
        await self.send("strings", self.doc("calm", 15, base, now(), v=True))
        # 100,000 distinct names (on a stream of their own: a device restart)
        for m in range(NAMES // NAMES_PER_MESSAGE):
            names = {f"disk.used_percent[/h/{m}/{i}]": 40.0 for i in range(NAMES_PER_MESSAGE)}
            names[f"custom.m{m}"] = 1.0
            await self.send("names", self.doc("flood", m, names, now()))


def backend_rss_mib(system: System) -> float:
    assert system.backend is not None and system.backend.proc is not None
    status = Path(f"/proc/{system.backend.proc.pid}/status").read_text()
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return kib / 1024


async def test_one_hostile_device_cannot_hurt_the_fleet(
    broker: Mosquitto, tmp_path: Path
) -> None:
    import time

    spec = SystemSpec(
        sim_devices=18, agents=(AgentSpec("agent-1"), AgentSpec("agent-2")),
        spikes=(spike(0, 6, 6), spike(3, 10, 6, "temp"), spike(7, 20, 5)),
        extra_rules=DISK_RULE, unchecked_devices=(EVIL,), backend_settings=BOUNDS,
    )
    async with System(broker, tmp_path / "system", spec, "hostile") as system:
        await system.start()
        evil = await Hostile.connect(broker)
        try:
            await evil.run(time.time)
            peak = backend_rss_mib(system)
            figures = await system.finish()
        finally:
            await evil.client.stop()
        _, metrics = await system.get("/metrics")
        _, devices = await system.get("/api/devices")
        rss = max(peak, backend_rss_mib(system))
        system.figures.extra.update(rss_mib=round(rss, 1), sent=evil.sent)
    assert figures.sim_samples > 0
    assert rss < RSS_BOUND_MIB, f"backend RSS {rss:.0f} MiB >= {RSS_BOUND_MIB} MiB"
    assert metric_value(metrics, "edgefleet_lost_samples") >= 0  # sane, never ~1e18
    assert metric_value(metrics, "edgefleet_lost_samples") < 2**53
    # every refusal counted by its reason
    # 3 string-typed documents + 2 seqs above 2^53-1 (docs/protocol.md)
    assert metric_value(metrics, 'edgefleet_ingest_rejected_total{reason="malformed"}') == 5
    # every flood name beyond the family's bound (the mention names hold 5 of its places)
    refused = metric_value(metrics, 'edgefleet_ingest_refused_keys_total{reason="cardinality"}')
    accepted = BOUNDS["max_instances_per_family"] - len(MENTIONS)
    assert refused == NAMES - accepted, refused
    assert metric_value(metrics, 'edgefleet_ingest_anomalies_total{kind="seq_jump"}') >= 1
    assert metric_value(metrics, "edgefleet_stream_resets_total") >= STREAM_CHURN
    # Slack saw the hostile names escaped, never raw
    raw = json.dumps(system.slack.messages)
    for mention in MENTIONS:
        assert json.dumps(mention)[1:-1] not in raw, f"{mention} reached Slack unescaped"
    assert "&lt;!channel&gt;" in raw
    # the alternating streams are flagged as two agents under one name
    rows = {d["id"]: d for d in devices["devices"]}
    assert rows[EVIL].get("identity_conflict"), rows[EVIL]
