"""Deployment-time configuration validation: recipe keys checked against the settings models,
answered over (stand-in) IPC with ACCEPTED or REJECTED and a one-line reason."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakeipc import FakeIpcClient

from edgefleet.agent.greengrass import (
    LIVE_KEYS,
    agent_overrides,
    check_agent_configuration,
    watch_agent_configuration,
)
from edgefleet.backend.greengrass import check_backend_configuration, watch_backend_configuration
from edgefleet.common.greengrass import watch_configuration
from edgefleet.transport.ipc import IpcTransport


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"intervalS": 0}, "intervalS: Input should be greater than or equal to 0.05 (got '0')"),
        ({"maxPublishesPerS": 200}, "maxPublishesPerS: Input should be less than or equal to 100"),
        ({"port": "eighty"}, "port: Input should be a valid integer"),
        ({"transport": "carrier-pigeon"}, "transport: Input should be 'auto', 'mqtt' or 'ipc'"),
        ({"queue": "tape"}, "queue: Input should be 'sqlite' or 'memory'"),
        ({"intervalSec": 5}, "unknown configuration key 'intervalSec'; known: awsLimits"),
        ({"collectors": ["cpu", "memory"]}, "collectors: must be a string, number or boolean"),
        ({"endpoint": None}, "endpoint: must not be null"),
        ({"logLevel": "LOUD"}, "logLevel: must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"processes": "bad[x]"}, "processes: process spec 'bad[x]': the name/label must be"),
        ({"systemdUnits": "a.service, bad unit"}, "systemdUnits: 'bad unit' is not a systemd unit"),
        ({"execTimeoutS": 0}, "execTimeoutS: Input should be greater than 0 (got '0')"),
        ({"delivery": "carrier"}, "delivery: Input should be 'auto', 'backend' or 'broker'"),
        ({"giveUpAfter": 0}, "giveUpAfter: Input should be greater than or equal to 1"),
    ],
)
def test_agent_proposals_rejected_with_one_line_reasons(config: dict[str, Any], reason: str) -> None:
    got = check_agent_configuration(config)
    assert got is not None and got.startswith(reason), got
    assert "\n" not in got


def test_agent_proposals_accepted() -> None:
    assert check_agent_configuration({}) is None
    assert check_agent_configuration({
        "intervalS": 2.5, "collectors": "cpu, memory", "awsLimits": False, "port": 443,
        "endpoint": "", "logLevel": "debug", "accessControl": {"aws.greengrass.ipc.mqttproxy": {}},
    }) is None


def test_collector_and_delivery_keys_are_live_settings() -> None:
    deployed = {
        "systemdUnits": "nginx.service,app.service", "systemdIntervalS": 10, "processes": "nginx",
        "textfileDir": "/var/lib/app/metrics", "execCommand": "", "execTimeoutS": 2,
        "execIntervalS": 30, "customMaxKeys": 50, "delivery": "backend", "resendAfterS": 60,
        "maxUncommitted": 500, "giveUpAfter": 3,
    }  # fmt: skip
    assert check_agent_configuration(deployed) is None
    assert set(deployed) <= LIVE_KEYS  # applied in place, never a component restart
    # execCommand "" = the built-in default (no command): left out like the Run step unsets it
    assert agent_overrides(deployed) == {
        "systemd_units": "nginx.service,app.service", "systemd_interval_s": "10",
        "processes": "nginx", "textfile_dir": "/var/lib/app/metrics", "exec_timeout_s": "2",
        "exec_interval_s": "30", "custom_max_keys": "50", "delivery": "backend",
        "resend_after_s": "60", "max_uncommitted": "500", "give_up_after": "3",
    }  # fmt: skip


def test_validation_ignores_the_running_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_INTERVAL_S", "0.0001")
    monkeypatch.setenv("EDGE_AGENT_PORT", "not-a-port")
    assert check_agent_configuration({"intervalS": 10}) is None
    assert check_agent_configuration({"intervalS": 0.01}) is not None


def test_numbers_are_checked_as_the_nucleus_renders_them() -> None:
    # Setenv receives Jackson's text: 1.5 stays "1.5", which is no integer.
    assert check_agent_configuration({"maxInflight": 1.5}) is not None
    assert check_agent_configuration({"maxInflight": 20}) is None


def test_backend_rules_apply_and_secrets_are_not_echoed() -> None:
    reason = check_backend_configuration({"httpHost": "0.0.0.0"})
    assert reason is not None and "AUTH_TOKEN" in reason
    reason = check_backend_configuration({"authToken": "hunter2"})
    assert reason is not None and "hunter2" not in reason
    assert check_backend_configuration({"httpHost": "0.0.0.0", "authToken": "x" * 32}) is None


def test_watch_answers_each_deployment() -> None:
    client = FakeIpcClient()
    watch_agent_configuration(client)
    client.propose({"intervalS": 30}, deployment_id="dep-ok")
    client.propose({"intervalS": -1}, deployment_id="dep-bad")
    ok, bad = client.reports
    assert (ok.status, ok.deployment_id) == ("ACCEPTED", "dep-ok")
    assert (bad.status, bad.deployment_id) == ("REJECTED", "dep-bad")
    assert bad.message.startswith("intervalS: Input should be greater than or equal to 0.05")


def test_a_check_that_raises_rejects_with_a_reason_and_the_next_one_is_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[dict[str, Any]] = []

    def flaky(config: Any) -> str | None:
        calls.append(dict(config))
        if len(calls) == 1:
            raise ValueError("rules file unreadable\nsecond line")
        return None

    client = FakeIpcClient()
    watch_configuration(client, flaky)
    client.propose({"intervalS": 30}, deployment_id="dep-1")
    client.propose({"intervalS": 30}, deployment_id="dep-2")
    failed, ok = client.reports
    assert (failed.status, failed.deployment_id) == ("REJECTED", "dep-1")
    assert failed.message == "the component could not check this configuration (ValueError: rules file unreadable)"
    assert (ok.status, ok.deployment_id) == ("ACCEPTED", "dep-2")
    assert any(r.levelname == "ERROR" and "configuration check failed" in r.getMessage() for r in caplog.records)


def test_watch_backend_uses_the_backend_model() -> None:
    client = FakeIpcClient()
    watch_backend_configuration(client)
    client.propose({"httpPort": 9000, "clientId": "backend"})
    client.propose({"httpPort": 70000})
    assert [r.status for r in client.reports] == ["ACCEPTED", "REJECTED"]


async def test_the_agents_transport_subscribes_validation_when_it_connects() -> None:
    client = FakeIpcClient()
    transport = IpcTransport(client_factory=lambda: client, on_client=watch_agent_configuration)
    transport.start()
    await asyncio.wait_for(transport.connected.wait(), 5)
    client.propose({"queue": "tape"})
    [report] = client.reports
    assert report.status == "REJECTED" and report.message.startswith("queue:")
    await transport.stop()


async def test_a_failing_hook_does_not_stop_the_transport() -> None:
    client = FakeIpcClient()

    def broken(_client: Any) -> None:
        raise RuntimeError("old nucleus: operation not supported")

    transport = IpcTransport(client_factory=lambda: client, on_client=broken)
    transport.start()
    await asyncio.wait_for(transport.connected.wait(), 5)
    assert await transport.publish("dt/edgefleet/dev-1/metrics", b"{}") == 0
    await transport.stop()
