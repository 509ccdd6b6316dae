"""The simulator against a real Mosquitto: what a subscriber receives is the ground truth."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ClientFactory
from edgefleet.dev.broker import Mosquitto
from edgefleet.errors import ProtocolError
from edgefleet.sim import ScriptedEvent, SimOptions, Truth, run_simulation
from edgefleet.wire.messages import (
    METRICS_FILTER,
    STATUS_FILTER,
    MetricsMessage,
    StatusMessage,
    decode,
)

pytestmark = [pytest.mark.slow]

BUFFERED, POWER, SPIKY = "sim-0001", "sim-0002", "sim-0003"


class Recorder:
    """Every message the backend identity receives, decoded, in arrival order."""

    def __init__(self) -> None:
        self.messages: list[MetricsMessage | StatusMessage] = []
        self.refused: list[str] = []

    def on_message(self, topic: str, payload: bytes) -> None:
        try:
            self.messages.append(decode(topic, payload))
        except ProtocolError as exc:  # an SDK thread: keep it for the assertion
            self.refused.append(str(exc))

    def metrics(self, device: str) -> list[MetricsMessage]:
        return [m for m in self.messages if isinstance(m, MetricsMessage) and m.device_id == device]

    def states(self, device: str) -> list[str]:
        return [m.state for m in self.messages if isinstance(m, StatusMessage)
                and m.device_id == device]

    def seqs(self, device: str) -> set[tuple[str, int]]:
        return {(m.stream, s.seq) for m in self.metrics(device) for s in m.samples}

    async def wait_for(self, truth: Truth, timeout: float) -> None:
        """Until every acked sample arrived (acked means the broker has it)."""
        async with asyncio.timeout(timeout):
            while not self.refused and any(len(self.seqs(name)) < t.acked.count for name, t in truth.devices.items()):
                await asyncio.sleep(0.05)


async def _backend(mqtt_client: ClientFactory) -> Recorder:
    rec = Recorder()
    backend = mqtt_client("backend", on_message=rec.on_message, session_expiry_s=3600)
    await asyncio.wait_for(backend.connected.wait(), 10)
    await backend.subscribe([METRICS_FILTER, STATUS_FILTER])
    return rec


def _assert_received_is_truth(rec: Recorder, truth: Truth) -> None:
    assert rec.refused == []  # every message passed protocol.decode
    for name, dev in truth.devices.items():
        assert dev.pending == [] and dev.dropped.count == 0, name
        assert dev.acked.ranges() == [[0, dev.taken - 1]], name
        assert rec.seqs(name) == {(dev.stream, seq) for seq in range(dev.taken)}, name


def _assert_dropouts_sent_the_will(rec: Recorder, truth: Truth) -> None:
    # the Last Will 'offline' between two 'online's, then the clean stop's 'offline'
    for name in (BUFFERED, POWER):
        assert rec.states(name) == ["online", "offline", "online", "offline"], name
        assert truth.devices[name].connects == 2
    assert rec.states("sim-0010") == ["online", "offline"]


def _assert_backlog_burst(rec: Recorder, truth: Truth) -> None:
    """The buffered dropout comes back as batched messages with the original timestamps."""
    window = truth.devices[BUFFERED].offline[0]
    assert window.end is not None and window.end - window.start == pytest.approx(1.5, abs=0.3)
    burst = [m for m in rec.metrics(BUFFERED) if len(m.samples) > 1]
    assert burst, "the backlog was not batched"
    taken_offline = [s for m in burst for s in m.samples if window.start <= s.ts < window.end]
    assert len(taken_offline) >= 6  # ~1.5 s at 5 samples/s
    assert burst[0].sent_at - burst[0].samples[0].ts >= 1.2  # sent late, stamped when taken


def _assert_power_loss_and_spike(rec: Recorder, truth: Truth) -> None:
    off = truth.devices[POWER].offline[0]
    assert off.end is not None
    taken_ts = [s.ts for m in rec.metrics(POWER) for s in m.samples]
    assert not [ts for ts in taken_ts if off.start < ts < off.end - 0.01]  # nothing while off
    (spike,) = truth.devices[SPIKY].spikes
    for msg in rec.metrics(SPIKY):
        for s in msg.samples:
            assert (s.metrics["cpu.percent"] > 90) == (spike.start <= s.ts < spike.end)


async def test_twenty_devices_deliver_exactly_the_ground_truth(
    broker: Mosquitto, mqtt_client: ClientFactory, tmp_path: Path
) -> None:
    rec = await _backend(mqtt_client)
    script = (
        ScriptedEvent(0, "dropout", 1.0, 1.5, buffered=True),
        ScriptedEvent(1, "dropout", 1.0, 1.5, buffered=False),
        ScriptedEvent(2, "spike", 0.5, 2.0, "cpu"),
    )
    opts = SimOptions(
        devices=20, interval_s=0.2, port=broker.port, pki=broker.pki, duration_s=5.0, seed=3,
        spike_rate=0, dropout_rate=0, script=script, truth_file=tmp_path / "truth.json",
        truth_every_s=1.0,
    )
    truth = await run_simulation(opts)
    await rec.wait_for(truth, 10)
    _assert_received_is_truth(rec, truth)
    assert all(20 <= d.taken <= 30 for n, d in truth.devices.items() if n != POWER)
    assert truth.connect_s is not None and truth.connect_s < 10
    _assert_dropouts_sent_the_will(rec, truth)
    _assert_backlog_burst(rec, truth)
    _assert_power_loss_and_spike(rec, truth)
    doc = json.loads((tmp_path / "truth.json").read_text())
    assert doc["final"] and doc["options"]["seed"] == 3
    assert doc["totals"]["count"] == sum(d.acked.count for d in truth.devices.values())
    assert doc["devices"][BUFFERED]["offline_windows"][0]["buffered"] is True


@pytest.mark.fault
async def test_a_broker_restart_loses_nothing(
    broker: Mosquitto, mqtt_client: ClientFactory
) -> None:
    rec = await _backend(mqtt_client)
    opts = SimOptions(devices=5, interval_s=0.1, port=broker.port, pki=broker.pki,
                      duration_s=7.0, spike_rate=0, dropout_rate=0, reconnect_max_s=1.0)
    stop = asyncio.Event()
    run = asyncio.create_task(run_simulation(opts, stop))
    await asyncio.sleep(2)
    broker.stop()
    await asyncio.sleep(2)
    broker.start()
    truth = await run
    await rec.wait_for(truth, 20)
    _assert_received_is_truth(rec, truth)
    assert all(d.connects >= 2 for d in truth.devices.values())


def _cli(broker: Mosquitto, tmp_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "edgefleet", "--log-level", "WARNING", "simulate",
            "--devices", "3", "--rate", "5", "--port", str(broker.port), "--pki",
            str(broker.pki), "--truth", str(tmp_path / "truth.json"), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def test_cli_runs_until_sigterm_and_writes_the_final_truth(
    broker: Mosquitto, tmp_path: Path
) -> None:
    proc = _cli(broker, tmp_path, "--demo")
    truth_file = tmp_path / "truth.json"
    async with asyncio.timeout(20):
        while not truth_file.exists():
            await asyncio.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.to_thread(proc.communicate, timeout=15)
    assert proc.returncode == 0, err.decode()
    assert out.decode().startswith("simulated 3 devices:")
    doc = json.loads(truth_file.read_text())
    assert doc["final"] and doc["totals"]["count"] >= 10
    # under load a few samples may still await their PUBACK at the stop: they are listed as
    # pending (never counted as delivered), device by device
    for dev in doc["devices"].values():
        assert sum(b - a + 1 for a, b in dev["pending_ranges"]) == dev["pending"]
    assert doc["options"]["demo"] is True and doc["options"]["interval_s"] == 0.2


async def test_cli_without_a_ca_fails_with_one_line(broker: Mosquitto, tmp_path: Path) -> None:
    proc = _cli(broker, tmp_path, "--pki", str(tmp_path / "nowhere"), "--duration", "1")
    _, err = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines() == [
        f"edgefleet simulate: error: no CA at {tmp_path / 'nowhere' / 'ca.pem'}: start "
        "`edgefleet broker` first or pass --pki DIR (the broker's pki folder)"
    ]
