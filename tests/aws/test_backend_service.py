"""infra/backend-service.yaml (two Fargate tasks on RDS PostgreSQL) and the Firehose archive of
infra/edgefleet.yaml: consistent with the code, and accepted by the AWS APIs (moto).

cfn-lint runs over every template in tests/aws/test_infra.py. Here: the settings the tasks
set exist and validate (pydantic-settings ignores a misspelled variable, so a typo would
deploy silently), the two tasks' MQTT client ids never collide and are granted by the
rendered backend policy, the database is private with RDS-managed credentials, and the
resources' properties, resolved as CloudFormation would, are created through boto3 in moto.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws
from tests.aws.cfn_resolve import Resolver, camel

from edgefleet.aws.policies import backend_policy_document, policy_documents
from edgefleet.aws.policy_eval import Connection, IotPolicyEvaluator
from edgefleet.backend.settings import BackendSettings
from edgefleet.wire.policy import BACKEND_IDENTITY, backend_connection_id, backend_shared_filters

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "infra" / "backend-service.yaml"
PRODUCTION = ROOT / "infra" / "edgefleet.yaml"
REGION, ACCOUNT = "eu-west-1", "123456789012"
PREFIX = "EDGE_BACKEND_"
# Settings the template sets that the backend does not know yet: each needs a change in
# src/edgefleet/backend (docs/production.md says which). Remove an entry once it exists.
PENDING: set[str] = set()
TASKS = ("TaskDefinitionA", "TaskDefinitionB")


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(SERVICE.read_text())
    return doc


def backend_container(template: dict[str, Any], task: str) -> dict[str, Any]:
    [found] = [c for c in template["Resources"][task]["Properties"]["ContainerDefinitions"]
               if c["Name"] == "backend"]
    return found


def sample_refs(template: dict[str, Any], connections: int = 2) -> dict[str, Any]:
    refs: dict[str, Any] = {k: v.get("Default") for k, v in template["Parameters"].items()}
    refs.update({
        "AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws",
        "ImageUri": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/edgefleet:1.2.0",
        "IotEndpoint": f"abc123-ats.iot.{REGION}.amazonaws.com",
        "MqttIdentitySecretArn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:mqtt-Ab12",
        "ConnectionsPerTask": str(connections), "ApiTokenSecret": "arn:token",
    })
    return refs


SAMPLE_ATTRS = {"Database.Endpoint.Address": "db.example.internal", "Database.Endpoint.Port": "5432",
                "Database.MasterUserSecret.SecretArn": "arn:db-secret", "ExecutionRole.Arn": "arn:role"}


def task_environment(template: dict[str, Any], task: str, connections: int) -> dict[str, str]:
    resolve = Resolver(template, sample_refs(template, connections), SAMPLE_ATTRS, {})
    env = resolve(backend_container(template, task)["Environment"])
    return {e["Name"]: str(e["Value"]) for e in env}


def test_every_setting_the_tasks_set_is_a_backend_setting(service: dict[str, Any]) -> None:
    known = set(BackendSettings.model_fields)
    assert not PENDING & known, f"{PENDING & known} exist now: remove them from PENDING"
    for task in TASKS:
        container = backend_container(service, task)
        names = [e["Name"] for e in container["Environment"] + container["Secrets"]]
        settings = {n.removeprefix(PREFIX).lower() for n in names if n.startswith(PREFIX)}
        assert settings - known == PENDING, task


@pytest.mark.parametrize("task", TASKS)
def test_task_settings_validate(service: dict[str, Any], task: str,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings a task starts with (secrets as sample values) pass BackendSettings'
    checks: a listener beyond loopback has its token, the URL carries no password."""
    env = task_environment(service, task, connections=3)
    env.update({"EDGE_BACKEND_AUTH_TOKEN": "x" * 40,
                "EDGE_BACKEND_SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T/B/x"})
    for name in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = BackendSettings()
    assert s.connections == 3
    assert s.client_id == BACKEND_IDENTITY
    assert s.database_url is not None
    url = s.database_url.get_secret_value()
    assert url.startswith("postgresql://db.example.internal:5432/edgefleet?")
    assert "@" not in url  # user and password come from PGUSER/PGPASSWORD (the RDS secret)
    secrets = {e["Name"]: e["ValueFrom"] for e in backend_container(service, task)["Secrets"]}
    for name, key in (("PGUSER", "username"), ("PGPASSWORD", "password")):
        assert secrets[name] == {
            "Fn::Sub": f"${{Database.MasterUserSecret.SecretArn}}:{key}::"}


@pytest.mark.parametrize("connections", [1, 2, 3, 4])
def test_the_two_tasks_client_ids_never_collide(service: dict[str, Any],
                                                connections: int) -> None:
    """Task A connects as backend-1..K, task B as backend-(K+1)..2K: disjoint, each granted
    Connect and the shared subscriptions by the rendered policy on the one certificate."""
    allowed = service["Parameters"]["ConnectionsPerTask"]["AllowedValues"]
    assert connections in allowed
    iot = IotPolicyEvaluator([backend_policy_document(REGION, ACCOUNT)], region=REGION,
                             account=ACCOUNT)
    ids = []
    for task in TASKS:
        env = task_environment(service, task, connections)
        first = int(env[f"{PREFIX}CONNECTION_FIRST"])
        assert int(env[f"{PREFIX}CONNECTIONS"]) == connections
        ids.append({backend_connection_id(env[f"{PREFIX}CLIENT_ID"], first + k)
                    for k in range(connections)})
    assert not ids[0] & ids[1]
    for client_id in ids[0] | ids[1]:
        conn = Connection(client_id, frozenset({BACKEND_IDENTITY}))
        assert iot.allows(conn, "iot:Connect", client_id), client_id
        assert all(iot.allows(conn, "iot:Subscribe", flt) for flt in backend_shared_filters())


def test_database_is_private_and_its_credentials_managed(service: dict[str, Any]) -> None:
    res = service["Resources"]
    db = res["Database"]["Properties"]
    assert db["PubliclyAccessible"] is False
    assert db["StorageEncrypted"] is True
    assert db["ManageMasterUserPassword"] is True
    assert "MasterUserPassword" not in db  # no password in the template or its parameters
    assert not [p for p in service["Parameters"] if "password" in p.lower()]
    assert res["DatabaseSubnetGroup"]["Properties"]["SubnetIds"] == {"Ref": "PrivateSubnetIds"}
    ingress = [r["Properties"] for r in res.values()
               if r["Type"] == "AWS::EC2::SecurityGroupIngress"
               and r["Properties"]["GroupId"] == {"Ref": "DatabaseSecurityGroup"}]
    assert ingress == [{**ingress[0], "SourceSecurityGroupId": {"Ref": "TaskSecurityGroup"}}]
    assert "SecurityGroupIngress" not in res["DatabaseSecurityGroup"]["Properties"]


def test_two_services_never_run_one_identity_twice(service: dict[str, Any]) -> None:
    services = [r["Properties"] for r in service["Resources"].values()
                if r["Type"] == "AWS::ECS::Service"]
    assert sorted(s["TaskDefinition"]["Ref"] for s in services) == list(TASKS)
    assert sorted(str(s["DesiredCount"]) for s in services) == ["1", "{'Ref': 'SecondTaskCount'}"]
    assert service["Parameters"]["SecondTaskCount"]["AllowedValues"] == [0, 1]
    assert "ServiceA" in service["Resources"]["ServiceB"]["DependsOn"]  # one after the other
    for props in services:
        assert props["DeploymentConfiguration"]["MaximumPercent"] == 100  # old stops first
        assert props["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == \
            "DISABLED"


# --- through the APIs (moto) -------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield lambda service: boto3.client(service, region_name=REGION)


def role(aws: Any, resolve: Resolver, props: dict[str, Any], name: str) -> str:
    doc = json.dumps(resolve(props["AssumeRolePolicyDocument"]))
    arn: str = aws("iam").create_role(RoleName=name, AssumeRolePolicyDocument=doc)["Role"]["Arn"]
    return arn


def test_archive_policies_and_rules_are_accepted(aws: Any) -> None:
    template: dict[str, Any] = yaml.safe_load(PRODUCTION.read_text())
    res = template["Resources"]
    refs = {**sample_refs(template), "MetricsBucket": "edgefleet-metrics",
            "ArchiveLogGroup": "/edgefleet/archive-delivery", "ArchiveLogStream": "S3Delivery",
            "RuleErrorLogGroup": "/edgefleet/iot-rule-errors", "AlertTopic": "arn:topic"}
    attrs: dict[str, Any] = {"MetricsBucket.Arn": "arn:aws:s3:::edgefleet-metrics",
                             "ArchiveLogGroup.Arn": "arn:log", "RuleErrorLogGroup.Arn": "arn:log"}
    resolve = Resolver(template, refs, attrs, {})
    aws("s3").create_bucket(Bucket="edgefleet-metrics",
                            CreateBucketConfiguration={"LocationConstraint": REGION})
    for name in ("ArchiveRole", "MetricsRuleRole", "AlertRuleRole"):
        attrs[f"{name}.Arn"] = role(aws, resolve, res[name]["Properties"], name)
    firehose = aws("firehose")
    props = resolve(res["ArchiveStream"]["Properties"])
    stream = firehose.create_delivery_stream(DeliveryStreamName="edgefleet-archive", **props)
    refs["ArchiveStream"] = "edgefleet-archive"
    attrs["ArchiveStream.Arn"] = stream["DeliveryStreamARN"]
    desc = firehose.describe_delivery_stream(DeliveryStreamName="edgefleet-archive")
    [dest] = desc["DeliveryStreamDescription"]["Destinations"]
    s3 = dest["ExtendedS3DestinationDescription"]
    assert s3["Prefix"] == "metrics/date=!{timestamp:yyyy-MM-dd}/"
    assert s3["BufferingHints"] == {"IntervalInSeconds": 300, "SizeInMBs": 64}

    iot = aws("iot")
    for r in (r for r in res.values() if r["Type"] == "AWS::IoT::Policy"):
        name = r["Properties"]["PolicyName"]
        iot.create_policy(policyName=name,
                          policyDocument=json.dumps(resolve(r["Properties"]["PolicyDocument"])))
        stored = json.loads(iot.get_policy(policyName=name)["policyDocument"])
        assert stored == policy_documents(REGION, ACCOUNT)[name]
    for name in ("MetricsTopicRule", "OfflineAlertRule"):
        payload = camel(resolve(res[name]["Properties"]["TopicRulePayload"]))
        iot.create_topic_rule(ruleName=name, topicRulePayload=payload)
    rule = iot.get_topic_rule(ruleName="MetricsTopicRule")["rule"]
    assert rule["actions"] == [{"firehose": {"deliveryStreamName": "edgefleet-archive",
                                             "roleArn": attrs["MetricsRuleRole.Arn"],
                                             "separator": "\n"}}]


def test_service_resources_are_accepted(aws: Any, service: dict[str, Any]) -> None:
    res = service["Resources"]
    ec2, rds, ecs = aws("ec2"), aws("rds"), aws("ecs")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24",
                                 AvailabilityZone=f"{REGION}{z}")["Subnet"]["SubnetId"]
               for i, z in enumerate("ab")]
    refs = {**sample_refs(service), "VpcId": vpc, "PrivateSubnetIds": subnets,
            "SecondTaskCount": 1}
    attrs: dict[str, Any] = {}
    resolve = Resolver(service, refs, attrs, {"MultiAz": True})
    for name in ("TaskSecurityGroup", "DatabaseSecurityGroup"):
        props = resolve(res[name]["Properties"])
        refs[name] = ec2.create_security_group(GroupName=name, VpcId=vpc,
                                               Description=props["GroupDescription"])["GroupId"]
    rds.create_db_subnet_group(DBSubnetGroupName="edgefleet", SubnetIds=subnets,
                               DBSubnetGroupDescription="edgefleet private subnets")
    refs["DatabaseSubnetGroup"] = "edgefleet"
    props = resolve(res["Database"]["Properties"])
    props["VpcSecurityGroupIds"] = props.pop("VPCSecurityGroups")
    db = rds.create_db_instance(DBInstanceIdentifier="edgefleet", **props)["DBInstance"]
    assert db["PubliclyAccessible"] is False
    attrs.update({"Database.Endpoint.Address": "edgefleet.x.rds.amazonaws.com",
                  "Database.Endpoint.Port": "5432",
                  "Database.MasterUserSecret.SecretArn": db["MasterUserSecret"]["SecretArn"]})
    refs["ApiTokenSecret"] = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:token-Ab12"
    attrs["ExecutionRole.Arn"] = role(aws, resolve, res["ExecutionRole"]["Properties"], "exec")
    refs["Cluster"] = ecs.create_cluster(clusterName="edgefleet")["cluster"]["clusterArn"]
    log_group = res["BackendLogGroup"]["Properties"]["LogGroupName"]
    aws("logs").create_log_group(logGroupName=log_group)
    refs["BackendLogGroup"] = log_group
    for task, svc in zip(TASKS, ("ServiceA", "ServiceB"), strict=True):
        props = camel(resolve(res[task]["Properties"]), keep=frozenset({"Options"}))
        refs[task] = ecs.register_task_definition(**props)["taskDefinition"]["taskDefinitionArn"]
        props = camel(resolve(res[svc]["Properties"]))
        ecs.create_service(**props)
    listed = ecs.list_services(cluster="edgefleet")["serviceArns"]
    assert len(listed) == 2
    described = ecs.describe_task_definition(taskDefinition="edgefleet-backend-b")
    [backend] = [c for c in described["taskDefinition"]["containerDefinitions"]
                 if c["name"] == "backend"]
    env = {e["name"]: e["value"] for e in backend["environment"]}
    assert env[f"{PREFIX}CONNECTION_FIRST"] == "3"  # K = 2 (the default): A has 1-2


# --- the commands the containers run -------------------------------------------------------------


def test_identity_container_writes_the_files_the_backend_reads(
        service: dict[str, Any], tmp_path: Path) -> None:
    """The init container turns the secret's three PEMs into the backend's files, the key
    readable by its owner only."""
    init, backend = service["Resources"]["TaskDefinitionA"]["Properties"]["ContainerDefinitions"]
    assert backend["DependsOn"] == [{"ContainerName": init["Name"], "Condition": "SUCCESS"}]
    [mount] = init["MountPoints"]
    code = init["Command"][0].replace(mount["ContainerPath"], str(tmp_path))
    env = {**os.environ, "MQTT_CERT": "CERT PEM", "MQTT_KEY": "KEY PEM", "MQTT_CA": "CA PEM"}
    subprocess.run([sys.executable, *init["EntryPoint"][1:], code], env=env, check=True,
                   timeout=30)
    files = {e["Name"]: e["Value"] for e in backend["Environment"] if e["Name"].endswith("_FILE")}
    written = {name: Path(path.replace(mount["ContainerPath"], str(tmp_path)))
               for name, path in files.items()}
    assert {n: p.read_text() for n, p in written.items()} == {
        "EDGE_BACKEND_CERT_FILE": "CERT PEM", "EDGE_BACKEND_KEY_FILE": "KEY PEM",
        "EDGE_BACKEND_CA_FILE": "CA PEM"}
    assert written["EDGE_BACKEND_KEY_FILE"].stat().st_mode & 0o777 == 0o600


def test_health_check_counts_a_degraded_backend_as_alive(service: dict[str, Any]) -> None:
    """503 (PostgreSQL away, the backend reconnecting) passes; no answer at all fails."""
    backend = backend_container(service, "TaskDefinitionA")
    kind, exe, *args = backend["HealthCheck"]["Command"]
    assert (kind, exe) == ("CMD", "python")

    class Degraded(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Degraded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        cmd = [sys.executable, *[a.replace(":8080/", f":{port}/") for a in args]]
        assert subprocess.run(cmd, timeout=30, check=False).returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    assert subprocess.run(cmd, timeout=30, check=False, capture_output=True).returncode != 0
