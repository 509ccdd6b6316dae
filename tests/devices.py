"""Test helper: hand-made device messages (the wire protocol) published by real identities."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from conftest import ClientFactory
from edgefleet.transport.mqtt import MqttClient
from edgefleet.wire.messages import (
    MetricsMessage,
    Sample,
    StatusMessage,
    encode,
    metrics_topic,
    status_topic,
)


def metrics_payload(
    device: str, seq: int, ts: float, metrics: Mapping[str, float], stream: str = "test-stream",
    *, held_from: int | None = None, seqs: Sequence[int] = (),
) -> bytes:
    """One MetricsMessage with the sample ``seq`` (and one per further seq in ``seqs``);
    ``held_from``: the agent waits for the backend's watermark."""
    samples = [Sample(seq=n, ts=ts, metrics=dict(metrics)) for n in (seq, *seqs)]
    msg = MetricsMessage(v=1, device_id=device, stream=stream, sent_at=ts, samples=samples,
                         held_from=held_from)
    return encode(msg)


def status_payload(device: str, state: str, ts: float, interval_s: float = 1.0) -> bytes:
    return encode(StatusMessage(
        v=1, device_id=device, state=state, ts=ts, interval_s=interval_s,  # type: ignore[arg-type]
    ))


class Device:
    """A hand-driven device: its own certificate, its own topics, its own seq counter."""

    def __init__(self, client: MqttClient, name: str) -> None:
        self.client = client
        self.name = name
        self.seq = 0

    @classmethod
    async def connect(cls, mqtt_client: ClientFactory, name: str) -> Device:
        client = mqtt_client(name)
        await asyncio.wait_for(client.connected.wait(), 15)
        return cls(client, name)

    async def online(self, ts: float, interval_s: float = 1.0) -> None:
        await self.client.publish(status_topic(self.name), status_payload(self.name, "online", ts, interval_s))

    async def sample(self, ts: float, **metrics: float) -> int:
        """Publish the next sample; keys use '_' for '.', e.g. cpu_percent=95."""
        seq = self.seq
        self.seq += 1
        body = {k.replace("_", ".", 1): v for k, v in metrics.items()}
        await self.client.publish(metrics_topic(self.name), metrics_payload(self.name, seq, ts, body))
        return seq

    async def resend(self, seq: int, ts: float, **metrics: float) -> None:
        body = {k.replace("_", ".", 1): v for k, v in metrics.items()}
        await self.client.publish(metrics_topic(self.name), metrics_payload(self.name, seq, ts, body))
