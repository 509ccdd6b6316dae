"""The Slack Lambda's settings: read from its documented variables in one place, passed on
explicitly, and a bad value refused with a line naming the variable."""

from __future__ import annotations

from typing import Any

import pytest
from tests.aws.test_infra import FakeServer, offline_record, serve, sns_event

from edgefleet.aws import lambda_slack
from edgefleet.aws.lambda_slack import LambdaSettings, post_alerts
from edgefleet.notify.model import Alert, DeliveryRefusedError


def test_the_documented_variables_fill_the_settings() -> None:
    settings = LambdaSettings.from_env({
        "EDGEFLEET_SLACK_WEBHOOK_PARAM": "/edgefleet/slack", "EDGEFLEET_SLACK_TIMEOUT_S": "2.5",
        "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT": "2999", "AWS_SESSION_TOKEN": "tok",
    })
    assert settings == LambdaSettings(webhook_url="", webhook_param="/edgefleet/slack",
                                      timeout_s=2.5, extension_port=2999, session_token="tok")
    assert LambdaSettings.from_env({}) == LambdaSettings()  # timeout 10 s, port 2773


@pytest.mark.parametrize("value", ["ten", "0", "-3", "nan"])
def test_a_bad_timeout_is_refused_naming_the_variable(value: str) -> None:
    with pytest.raises(DeliveryRefusedError, match="EDGEFLEET_SLACK_TIMEOUT_S must be a positive"):
        LambdaSettings.from_env({"EDGEFLEET_SLACK_TIMEOUT_S": value})


def test_a_bad_timeout_in_the_environment_fails_the_invocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(lambda_slack.TIMEOUT_ENV, "soon")
    monkeypatch.setenv(lambda_slack.WEBHOOK_ENV, "http://127.0.0.1:9/hook")
    with pytest.raises(DeliveryRefusedError, match=lambda_slack.TIMEOUT_ENV):
        lambda_slack.handler(sns_event(offline_record("dev-1")), None)


def test_post_alerts_uses_only_the_settings_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    state = FakeServer()
    server = serve(state)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(lambda_slack.WEBHOOK_ENV, "http://127.0.0.1:9/not-this-one")
    try:
        records: list[dict[str, Any]] = [offline_record(f"dev-{i}") for i in range(3)]
        alerts = [Alert.from_dict({**r, "instance": None, "labels": {}}) for r in records]
        assert post_alerts(alerts, LambdaSettings(webhook_url=state.url, timeout_s=5)) == 1
        assert len(state.posts) == 1 and "dev-2" in state.posts[0]["text"]
    finally:
        server.shutdown()
        server.server_close()
