"""The CloudFormation template lints clean and matches the code; the Slack Lambda works.

The Lambda is exercised the way AWS would call it (an SNS event wrapping an IoT rule's
output, or the rule's output directly) against a local HTTP server standing in for Slack's
incoming webhook and for the Parameters and Secrets extension.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from slack_sdk.models.blocks import Block

from edgefleet.aws import lambda_slack
from edgefleet.aws.policies import (
    AGENT_POLICY_NAME,
    BACKEND_POLICY_NAME,
    THING_GROUP_NAME,
    agent_policy_document,
    backend_policy_document,
    cloudformation_form,
)
from edgefleet.notify.model import Alert, DeliveryRefusedError, RetryLaterError
from edgefleet.wire.messages import METRICS_FILTER, STATUS_FILTER

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "edgefleet.yaml"
CFN_LINT = Path(sys.executable).with_name("cfn-lint")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
    return doc


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


# --- the template -------------------------------------------------------------------------------


def test_cfn_lint_reports_no_errors_or_warnings() -> None:
    files = sorted(str(p) for p in (ROOT / "infra").glob("*.yaml"))
    proc = subprocess.run([str(CFN_LINT), *files], capture_output=True, text=True, timeout=120,
                          check=False)
    # cfn-lint's exit code is a bit mask: 2 errors, 4 warnings, 8 informational.
    assert proc.returncode in (0, 8), proc.stdout + proc.stderr


def test_template_policies_are_the_generated_ones(template: dict[str, Any]) -> None:
    policies = {r["Properties"]["PolicyName"]: r["Properties"]["PolicyDocument"]
                for r in resources(template, "AWS::IoT::Policy").values()}
    assert policies == {
        AGENT_POLICY_NAME: cloudformation_form(agent_policy_document),
        BACKEND_POLICY_NAME: cloudformation_form(backend_policy_document),
    }


def rule_sql(template: dict[str, Any], name: str) -> str:
    return str(template["Resources"][name]["Properties"]["TopicRulePayload"]["Sql"])


def test_rules_listen_on_the_protocol_topics(template: dict[str, Any]) -> None:
    assert f"FROM '{METRICS_FILTER}'" in rule_sql(template, "MetricsTopicRule")
    assert f"FROM '{STATUS_FILTER}'" in rule_sql(template, "OfflineAlertRule")


def test_metrics_are_archived_in_batches_by_date(template: dict[str, Any]) -> None:
    """One Firehose record per message, newline-separated; Firehose writes one gzip object
    per buffer under metrics/date=YYYY-MM-DD/ (no S3 PUT per message)."""
    [action] = template["Resources"]["MetricsTopicRule"]["Properties"]["TopicRulePayload"][
        "Actions"]
    assert set(action) == {"Firehose"}
    assert action["Firehose"]["DeliveryStreamName"] == {"Ref": "ArchiveStream"}
    assert action["Firehose"]["Separator"] == "\n"
    s3 = template["Resources"]["ArchiveStream"]["Properties"]["ExtendedS3DestinationConfiguration"]
    assert s3["BucketARN"] == {"Fn::GetAtt": ["MetricsBucket", "Arn"]}
    assert s3["Prefix"] == "metrics/date=!{timestamp:yyyy-MM-dd}/"
    assert s3["CompressionFormat"] == "GZIP"
    assert s3["BufferingHints"] == {"IntervalInSeconds": {"Ref": "ArchiveBufferSeconds"},
                                    "SizeInMBs": {"Ref": "ArchiveBufferMiB"}}
    # the lifecycle rule that expires the archive covers where Firehose writes
    [expire] = [r for r in template["Resources"]["MetricsBucket"]["Properties"][
        "LifecycleConfiguration"]["Rules"] if r["Id"] == "expire-metrics"]
    assert s3["Prefix"].startswith(expire["Prefix"])


def test_offline_rule_output_is_an_alert(template: dict[str, Any]) -> None:
    """The SELECT's aliases are Alert fields and cover every required one."""
    names = set(re.findall(r"\bAS (\w+)\s*(?:,|FROM)", rule_sql(template, "OfflineAlertRule")))
    required = {"kind", "rule", "device", "severity", "value", "threshold", "event_id"}
    assert required <= names
    assert names <= set(Alert.__dataclass_fields__)
    assert "WHERE state = 'offline'" in rule_sql(template, "OfflineAlertRule")


def test_greengrass_deployment_targets_the_group(template: dict[str, Any]) -> None:
    [deployment] = resources(template, "AWS::GreengrassV2::Deployment").values()
    props = deployment["Properties"]
    assert props["TargetArn"] == {"Fn::GetAtt": ["DeviceThingGroup", "Arn"]}
    assert props["Components"] == {
        "com.edge.agent": {"ComponentVersion": {"Ref": "AgentComponentVersion"}},
        "com.edge.backend": {"ComponentVersion": {"Ref": "BackendComponentVersion"}},
    }
    assert template["Parameters"]["ThingGroupName"]["Default"] == THING_GROUP_NAME


def test_lambda_settings_point_at_the_handler(template: dict[str, Any]) -> None:
    props = template["Resources"]["SlackFunction"]["Properties"]
    module, _, func = props["Handler"].rpartition(".")
    assert module == lambda_slack.__name__
    assert callable(getattr(lambda_slack, func))
    assert lambda_slack.PARAM_ENV in props["Environment"]["Variables"]


# --- the Lambda ---------------------------------------------------------------------------------


@dataclass
class FakeServer:
    """Answers as Slack's webhook (``/hook``) and the SSM extension (``/systemsmanager``)."""

    port: int = 0
    posts: list[dict[str, Any]] = field(default_factory=list)
    ssm_headers: list[dict[str, str]] = field(default_factory=list)
    status: int = 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


def serve(state: FakeServer) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state.status != 200:
                self._answer(state.status, b"no_service")
                return
            state.posts.append(json.loads(body))
            self._answer(200, b"ok")

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            state.ssm_headers.append(dict(self.headers))
            value = {"Parameter": {"Name": query["name"][0], "Value": state.url}}
            self._answer(200, json.dumps(value).encode())

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.fixture
def slack(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    state = FakeServer()
    server = serve(state)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(lambda_slack.WEBHOOK_ENV, state.url)
    monkeypatch.delenv(lambda_slack.PARAM_ENV, raising=False)
    lambda_slack._cached_urls.clear()
    yield state
    server.shutdown()
    server.server_close()


def offline_record(device: str, ts: float = 1_700_000_000.0) -> dict[str, Any]:
    """What OfflineAlertRule's SELECT produces for a device's Last Will."""
    return {"kind": "firing", "rule": "offline", "device": device, "severity": "critical",
            "value": 0, "threshold": 0, "summary": f"Device {device} went offline",
            "started_at": ts, "at": ts + 1.5, "key": f"offline|{device}",
            "event_id": f"offline|{device}|{int(ts)}"}


def sns_event(*messages: Any) -> dict[str, Any]:
    return {"Records": [{"EventSource": "aws:sns", "EventVersion": "1.0",
                         "Sns": {"Type": "Notification", "Message": json.dumps(m)}}
                        for m in messages]}


def check_block_kit(post: dict[str, Any]) -> None:
    assert isinstance(post["text"], str)
    assert post["text"]
    assert 1 <= len(post["blocks"]) <= 50
    for doc in post["blocks"]:
        parsed = Block.parse(doc)
        assert parsed is not None
        parsed.validate_json()
        assert parsed.to_dict() == doc


def test_sns_event_posts_block_kit_to_the_webhook(slack: FakeServer) -> None:
    result = lambda_slack.handler(sns_event(offline_record("dev-7")), None)
    assert result == {"alerts": 1, "messages": 1, "skipped": 0}
    [post] = slack.posts
    check_block_kit(post)
    assert "dev-7" in post["text"]
    assert post["blocks"][0]["type"] == "header"


def test_many_alerts_in_one_event_become_one_grouped_message(slack: FakeServer) -> None:
    records = [offline_record(f"dev-{i:02d}") for i in range(60)]
    result = lambda_slack.handler(sns_event({"alerts": records[:30]}, records[30:]), None)
    assert result == {"alerts": 60, "messages": 1, "skipped": 0}
    [post] = slack.posts
    check_block_kit(post)
    assert post["text"].startswith("60 alerts firing: offline (critical)")


def test_direct_rule_event_and_minimal_records(slack: FakeServer) -> None:
    minimal = {"kind": "firing", "rule": "offline", "device": "dev-1", "severity": "critical",
               "value": 0, "threshold": 0, "event_id": "e1"}
    assert lambda_slack.handler(minimal, None)["messages"] == 1
    check_block_kit(slack.posts[0])


def test_unusable_records_are_skipped_not_retried(slack: FakeServer) -> None:
    bad = {**offline_record("dev-1"), "severity": "apocalyptic"}
    event = sns_event(bad, offline_record("dev-2"))
    event["Records"].append({"EventSource": "aws:sns", "Sns": {"Message": "not json"}})
    assert lambda_slack.handler(event, None) == {"alerts": 1, "messages": 1, "skipped": 2}
    assert lambda_slack.handler(sns_event({"no": "fields"}), None)["skipped"] == 1
    assert len(slack.posts) == 1


def test_webhook_url_from_ssm_through_the_extension(
    slack: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(lambda_slack.WEBHOOK_ENV)
    monkeypatch.setenv(lambda_slack.PARAM_ENV, "/edgefleet/slack-webhook-url")
    monkeypatch.setenv(lambda_slack.EXTENSION_PORT_ENV, str(slack.port))
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token")
    lambda_slack.handler(sns_event(offline_record("dev-1")), None)
    lambda_slack.handler(sns_event(offline_record("dev-2")), None)
    assert len(slack.posts) == 2
    assert len(slack.ssm_headers) == 1  # cached while the container lives
    assert slack.ssm_headers[0]["X-Aws-Parameters-Secrets-Token"] == "session-token"


def test_failures_raise_so_lambda_retries(slack: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    slack.status = 503
    with pytest.raises(RetryLaterError):
        lambda_slack.handler(sns_event(offline_record("dev-1")), None)
    slack.status = 404
    with pytest.raises(DeliveryRefusedError, match="no_service"):
        lambda_slack.handler(sns_event(offline_record("dev-1")), None)
    monkeypatch.setenv(lambda_slack.WEBHOOK_ENV, "http://127.0.0.1:9/hook")
    with pytest.raises(RetryLaterError, match="slack_connection"):
        lambda_slack.handler(sns_event(offline_record("dev-1")), None)
    monkeypatch.delenv(lambda_slack.WEBHOOK_ENV)
    with pytest.raises(DeliveryRefusedError, match="no_webhook"):
        lambda_slack.handler(sns_event(offline_record("dev-1")), None)


BLOCKER = """
import importlib.abc, json, sys
BLOCKED = ("aiohttp", "slack_sdk", "slack", "boto3", "botocore", "pydantic",
           "pydantic_settings", "yaml", "awscrt", "awsiot", "cryptography", "psutil")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked in this test: {name}")
        return None
sys.meta_path.insert(0, Block())
from edgefleet.aws.lambda_slack import handler
print(json.dumps(handler(json.loads(sys.argv[1]), None)))
"""


def test_lambda_runs_with_the_standard_library_only(slack: FakeServer) -> None:
    event = json.dumps(sns_event(offline_record("dev-3")))
    proc = subprocess.run([sys.executable, "-c", BLOCKER, event], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"alerts": 1, "messages": 1, "skipped": 0}
    check_block_kit(slack.posts[0])
