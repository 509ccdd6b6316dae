"""The IPC transport driven through a stand-in IPC client: topics, QoS, payloads, errors, and
the real Publisher keeping samples queued until the nucleus takes them."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time
from typing import Any

import pytest
from awsiot.greengrasscoreipc.model import ServiceError, UnauthorizedError
from fakeipc import FakeIpcClient

import edgefleet.agent.main as agent_main
from edgefleet import __version__
from edgefleet.agent.batch import sample_body
from edgefleet.agent.main import Agent, preflight
from edgefleet.agent.publisher import Limits, Publisher
from edgefleet.agent.queue import open_queue
from edgefleet.agent.settings import AgentSettings
from edgefleet.errors import ConfigError, PermanentPublishError, TransportError
from edgefleet.transport.base import Transport
from edgefleet.transport.ipc import GREENGRASS_ENV, IpcClient, IpcTransport, resolve_transport
from edgefleet.wire.messages import METRICS_FILTER, STATUS_FILTER, AgentHealth, metrics_topic

TOPIC = "dt/edgefleet/dev-1/metrics"


async def _connected(client: FakeIpcClient, **kw: Any) -> IpcTransport:
    transport = IpcTransport(client_factory=lambda: client, **kw)
    transport.start()
    await asyncio.wait_for(transport.connected.wait(), 5)
    return transport


async def test_connects_in_a_worker_thread_then_runs_the_hooks() -> None:
    client = FakeIpcClient()
    threads: list[str] = []
    events: list[str] = []

    def factory() -> IpcClient:
        threads.append(threading.current_thread().name)
        return client

    def on_client(c: IpcClient) -> None:
        assert c is client
        events.append("client")

    transport = IpcTransport(
        client_factory=factory, on_client=on_client, on_connect=lambda: events.append("connect")
    )
    assert not transport.connected.is_set()
    transport.start()
    await asyncio.wait_for(transport.connected.wait(), 5)
    assert threads and threads[0] != threading.main_thread().name
    assert events == ["client", "connect"]
    await transport.stop()
    assert client.closed and not transport.connected.is_set()


async def test_retries_until_the_nucleus_answers() -> None:
    client = FakeIpcClient()
    calls = 0

    def factory() -> IpcClient:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionRefusedError("nucleus socket not ready")
        return client

    transport = IpcTransport(client_factory=factory, retry_s=(0.01, 0.02))
    transport.start()
    await asyncio.wait_for(transport.connected.wait(), 5)
    assert calls == 3
    await transport.stop()


async def test_publish_sends_topic_qos1_and_payload_unchanged() -> None:
    client = FakeIpcClient()
    transport = await _connected(client)
    payload = b'{"v":1,"\xc3\xa9":0}'
    assert await transport.publish(TOPIC, payload) == 0
    assert client.published == [(TOPIC, "1", payload)]
    await transport.stop()


async def test_access_control_denial_is_permanent_135() -> None:
    client = FakeIpcClient(publish_errors=[UnauthorizedError(message="not authorized for topic")])
    transport = await _connected(client)
    with pytest.raises(PermanentPublishError) as caught:
        await transport.publish(TOPIC, b"{}")
    assert caught.value.reason_code == 135
    assert "not authorized" in str(caught.value) and TOPIC in str(caught.value)
    assert transport.connected.is_set()  # the publisher pauses on its own for refusals
    await transport.stop()


async def test_other_errors_are_transient_and_pause_the_publisher() -> None:
    client = FakeIpcClient(publish_errors=[ServiceError(message="spooler full")])
    transport = await _connected(client, retry_s=(0.2, 1.0))
    with pytest.raises(TransportError) as caught:
        await transport.publish(TOPIC, b"{}")
    assert not isinstance(caught.value, PermanentPublishError)
    assert "spooler full" in str(caught.value)
    assert not transport.connected.is_set()
    with pytest.raises(TransportError, match="not connected"):
        await transport.publish(TOPIC, b"{}")
    await asyncio.wait_for(transport.connected.wait(), 2)  # back after the pause
    assert await transport.publish(TOPIC, b"{}") == 0
    await transport.stop()


async def test_no_answer_in_time_is_a_transport_error() -> None:
    transport = await _connected(FakeIpcClient(hang=True), timeout_s=0.05)
    with pytest.raises(TransportError, match="no answer from the nucleus"):
        await transport.publish(TOPIC, b"{}")
    await transport.stop()


async def test_subscribe_delivers_topic_and_payload_in_order() -> None:
    client = FakeIpcClient(subscribe_errors={"dt/other/#": UnauthorizedError(message="denied")})
    got: list[tuple[str, bytes, str]] = []

    def on_message(topic: str, payload: bytes) -> None:
        got.append((topic, payload, threading.current_thread().name))

    transport = await _connected(client, on_message=on_message)
    codes = await transport.subscribe([METRICS_FILTER, STATUS_FILTER, "dt/other/#"])
    assert codes == [1, 1, 135]
    assert {f: qos for f, (qos, _) in client.subscriptions.items()} == {
        METRICS_FILTER: "1", STATUS_FILTER: "1",
    }
    for seq in range(3):
        client.deliver(METRICS_FILTER, TOPIC, f'{{"seq":{seq}}}'.encode())
    assert [(t, json.loads(p)["seq"]) for t, p, _ in got] == [(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)]
    assert all(isinstance(p, bytes) for _, p, _ in got)
    await transport.stop()
    assert all(stream.closed for stream in client.streams)


async def test_the_backend_callback_gets_no_ack_handle_and_ack_is_a_no_op() -> None:
    """The backend's ``OnMessage`` callback: the nucleus acknowledged on receipt, so there is
    no handle, ``manual_ack`` is False and ``ack`` has nothing to send."""
    client = FakeIpcClient()
    got: list[tuple[str, bytes, object]] = []
    transport = await _connected(client, on_message_acked=lambda t, p, h: got.append((t, p, h)))
    assert isinstance(transport, Transport) and transport.manual_ack is False
    await transport.subscribe([METRICS_FILTER])
    client.deliver(METRICS_FILTER, TOPIC, b'{"seq":0}')
    assert got == [(TOPIC, b'{"seq":0}', None)]
    transport.ack(None)  # accepted and ignored
    await transport.stop()


async def test_subscribe_failure_is_a_transport_error() -> None:
    client = FakeIpcClient(subscribe_errors={METRICS_FILTER: ServiceError(message="boom")})
    transport = await _connected(client)
    with pytest.raises(TransportError, match="boom"):
        await transport.subscribe([METRICS_FILTER])
    await transport.stop()


def _health() -> AgentHealth:
    return AgentHealth(
        queue_depth=0, queue_bytes=0, oldest_age_s=0.0, dropped_total=0,
        publish_errors_total=0, rss_bytes=0, agent_version=__version__,
    )


async def test_publisher_keeps_samples_queued_until_the_nucleus_takes_them() -> None:
    """An IPC error leaves every sample in the durable queue; the retry then empties it."""
    queue = open_queue("memory", None, max_bytes=1 << 20, max_samples=1000)
    for i in range(5):
        queue.put(time.time(), sample_body({"cpu.busy_pct": float(i)}, []))
    client = FakeIpcClient(publish_errors=[ServiceError(message="spooler full")])
    transport = await _connected(client, retry_s=(0.3, 0.3))
    publisher = Publisher(
        device_id="dev-1", queue=queue, transport=transport,
        limits=Limits(publishes_per_s=None, bytes_per_s=None), health=_health,
    )
    task = asyncio.create_task(publisher.run())
    async with asyncio.timeout(5):
        while client.attempts < 1 or transport.connected.is_set():
            await asyncio.sleep(0.01)
    assert queue.stats().depth == 5 and client.published == []  # error: all still queued
    async with asyncio.timeout(5):
        while queue.stats().depth:
            await asyncio.sleep(0.01)
    publisher.stop()
    await asyncio.wait_for(task, 5)
    await transport.stop()
    [(topic, qos, payload)] = client.published
    assert (topic, qos) == (metrics_topic("dev-1"), "1")
    assert [s["seq"] for s in json.loads(payload)["samples"]] == [0, 1, 2, 3, 4]
    assert publisher.stats.errors == 1 and publisher.stats.samples == 5


def _settings(monkeypatch: pytest.MonkeyPatch, **values: Any) -> AgentSettings:
    for key in [k for k in os.environ if k.startswith("EDGE_AGENT_")]:
        monkeypatch.delenv(key)
    return AgentSettings(thing_name="dev-1", queue="memory", **values)


def test_transport_auto_follows_the_greengrass_environment() -> None:
    assert resolve_transport("auto", {GREENGRASS_ENV: "/greengrass/v2/ipc.socket"}) == "ipc"
    assert resolve_transport("auto", {}) == "mqtt"
    assert resolve_transport("mqtt", {GREENGRASS_ENV: "/x"}) == "mqtt"
    assert resolve_transport("ipc", {}) == "ipc"


def test_preflight_ipc_needs_the_nucleus_but_no_certificates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GREENGRASS_ENV, raising=False)
    settings = _settings(monkeypatch, transport="ipc")
    with pytest.raises(ConfigError, match=GREENGRASS_ENV):
        preflight(settings)
    monkeypatch.setenv(GREENGRASS_ENV, "/greengrass/v2/ipc.socket")
    assert preflight(settings) == "dev-1"
    assert preflight(_settings(monkeypatch, transport="auto")) == "dev-1"
    with pytest.raises(ConfigError, match="CERT_FILE"):
        preflight(_settings(monkeypatch, transport="mqtt"))


async def test_agent_under_greengrass_uses_ipc_and_validates_its_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(GREENGRASS_ENV, "/greengrass/v2/ipc.socket")
    settings = _settings(monkeypatch)
    agent = Agent(settings, preflight(settings))
    transport = agent.publisher.transport
    assert isinstance(transport, IpcTransport)
    client = FakeIpcClient()
    assert transport._on_client is not None
    transport._on_client(client)  # what the transport does once connected
    assert client.validation is not None  # it answers configuration validation
    assert client.config_updates is not None and client.config_reads == 1  # and follows it
    agent.queue.close()


async def test_the_agent_runs_over_ipc_end_to_end(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The real Agent under Greengrass: status online, metrics, status offline, all via IPC.
    IPC has no Last Will, so the clean stop's ``offline`` is the only one a backend gets."""
    caplog.set_level(logging.INFO, logger="edgefleet")
    client = FakeIpcClient()
    monkeypatch.setattr(
        agent_main, "IpcTransport", functools.partial(IpcTransport, client_factory=lambda: client)
    )
    monkeypatch.setenv(GREENGRASS_ENV, "/greengrass/v2/ipc.socket")
    settings = _settings(monkeypatch, interval_s=0.1)
    agent = Agent(settings, preflight(settings))
    run = asyncio.create_task(agent.run())
    async with asyncio.timeout(10):
        while sum(t.endswith("/metrics") for t, _, _ in client.published) < 3:
            await asyncio.sleep(0.05)
    agent.stop()
    await asyncio.wait_for(run, 10)
    states = [json.loads(p)["state"] for t, _, p in client.published if t.endswith("/status")]
    assert states[0] == "online" and states[-1] == "offline"
    assert {qos for _, qos, _ in client.published} == {"1"}
    assert client.validation is not None  # it answers configuration validation
    [start] = [r for r in caplog.records if r.getMessage() == "agent starting"]
    assert start.fields["endpoint"] == "greengrass-ipc"  # not the unused mqtt endpoint:port
