"""`edgefleet provision` against moto (AWS itself cannot be reached from here)."""

from __future__ import annotations

import datetime as dt
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws

from edgefleet.aws.policies import AGENT_POLICY_NAME, THING_GROUP_NAME, agent_policy_document
from edgefleet.aws.provision import (
    ProvisionError,
    ProvisionRequest,
    provision,
    revoke,
)
from edgefleet.cli import main

REGION = "eu-west-1"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, so nothing here can ever talk to real AWS with real ones."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def iot(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("iot", region_name=REGION)


def request(tmp_path: Path, thing: str = "dev-1", **kw: Any) -> ProvisionRequest:
    return ProvisionRequest(thing=thing, out_dir=tmp_path / "certs", **kw)


def principals(iot: Any, thing: str) -> list[str]:
    return list(iot.list_thing_principals(thingName=thing)["principals"])


def status(iot: Any, cert_id: str) -> str:
    return str(iot.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"])


def test_provision_creates_thing_group_policy_and_certificate(iot: Any, tmp_path: Path) -> None:
    result = provision(iot, request(tmp_path))
    assert result.created == ["thing", "group", "policy", "certificate"]
    assert result.endpoint.endswith(f"-ats.iot.{REGION}.amazonaws.com")
    assert iot.list_things_in_thing_group(thingGroupName=THING_GROUP_NAME)["things"] == ["dev-1"]
    [cert_arn] = principals(iot, "dev-1")
    assert cert_arn.endswith(result.certificate_id)
    assert status(iot, result.certificate_id) == "ACTIVE"
    attached = iot.list_attached_policies(target=cert_arn)["policies"]
    assert [p["policyName"] for p in attached] == [AGENT_POLICY_NAME]
    stored = json.loads(iot.get_policy(policyName=AGENT_POLICY_NAME)["policyDocument"])
    account = cert_arn.split(":")[4]
    assert stored == agent_policy_document(REGION, account)
    assert result.key_file is not None
    assert stat.S_IMODE(result.key_file.stat().st_mode) == 0o600
    assert result.key_file.read_text().startswith("-----BEGIN")
    x509.load_pem_x509_certificate(result.cert_file.read_bytes())
    assert not list(result.cert_file.parent.glob("*.tmp"))


def test_second_run_creates_nothing_and_says_so(iot: Any, tmp_path: Path) -> None:
    first = provision(iot, request(tmp_path))
    assert first.key_file is not None
    key = first.key_file.read_bytes()
    again = provision(iot, request(tmp_path))
    assert again.created == []
    assert again.certificate_id == first.certificate_id
    assert any("kept certificate" in note for note in again.notes)
    assert len(iot.list_things()["things"]) == 1
    assert len(iot.list_certificates()["certificates"]) == 1
    assert first.key_file.read_bytes() == key


def test_second_run_restores_a_lost_certificate_and_warns_about_the_key(
    iot: Any, tmp_path: Path
) -> None:
    first = provision(iot, request(tmp_path))
    assert first.key_file is not None
    first.cert_file.unlink()
    first.key_file.unlink()
    again = provision(iot, request(tmp_path))
    assert again.created == []
    assert first.cert_file.exists()
    assert any("never returns a private key" in note for note in again.notes)


def test_rotate_adds_a_certificate_and_keeps_the_old_one_until_revoked(
    iot: Any, tmp_path: Path
) -> None:
    old = provision(iot, request(tmp_path))
    assert old.key_file is not None
    old_key = old.key_file.read_bytes()
    time.sleep(0.01)  # creation dates must differ for "newest first"
    new = provision(iot, request(tmp_path, rotate=True))
    assert new.created == ["certificate"]
    assert new.certificate_id != old.certificate_id
    assert any(old.certificate_id[:12] in note for note in new.notes)
    assert len(principals(iot, "dev-1")) == 2
    assert status(iot, old.certificate_id) == "ACTIVE"
    assert new.key_file is not None
    assert new.key_file.read_bytes() != old_key
    assert stat.S_IMODE(new.key_file.stat().st_mode) == 0o600
    assert provision(iot, request(tmp_path)).certificate_id == new.certificate_id

    assert revoke(iot, "dev-1", old.certificate_id[:12]) == [old.certificate_id]
    assert status(iot, old.certificate_id) == "INACTIVE"
    assert status(iot, new.certificate_id) == "ACTIVE"
    assert len(principals(iot, "dev-1")) == 1


def make_csr(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-9")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    path = tmp_path / "dev-9.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_csr_is_signed_and_no_key_is_made(iot: Any, tmp_path: Path) -> None:
    csr = make_csr(tmp_path)
    sent: list[str] = []
    iot.meta.events.register(
        "provide-client-params.iot.CreateCertificateFromCsr",
        lambda params, **_: sent.append(params["certificateSigningRequest"]),
    )
    result = provision(iot, request(tmp_path, "dev-9", csr_file=csr))
    assert sent == [csr.read_text()]
    assert result.key_file is None
    assert not (tmp_path / "certs" / "dev-9.private.key").exists()
    assert result.cert_file.exists()
    assert status(iot, result.certificate_id) == "ACTIVE"
    again = provision(iot, request(tmp_path, "dev-9", csr_file=csr))
    assert again.created == []
    assert any("CSR was not used" in note for note in again.notes)


def test_unwritable_out_dir_is_refused_before_any_aws_call(iot: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ProvisionError, match="cannot create"):
        provision(iot, ProvisionRequest(thing="dev-1", out_dir=blocker / "certs"))
    assert iot.list_things()["things"] == []


def test_bad_csr_is_refused_before_any_aws_call(iot: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csr"
    bad.write_text("not a csr")
    with pytest.raises(ProvisionError, match="not a PEM certificate signing request"):
        provision(iot, request(tmp_path, csr_file=bad))
    assert iot.list_things()["things"] == []


def test_revoke_deactivates_and_detaches_and_is_idempotent(iot: Any, tmp_path: Path) -> None:
    result = provision(iot, request(tmp_path))
    cert_arn = principals(iot, "dev-1")[0]
    assert revoke(iot, "dev-1") == [result.certificate_id]
    assert status(iot, result.certificate_id) == "INACTIVE"
    assert principals(iot, "dev-1") == []
    assert iot.list_attached_policies(target=cert_arn)["policies"] == []
    assert revoke(iot, "dev-1") == []
    with pytest.raises(ProvisionError, match="no certificate 'abc'"):
        revoke(iot, "dev-1", "abc")
    with pytest.raises(ProvisionError, match="no thing named 'ghost'"):
        revoke(iot, "ghost")
    # Provisioning again after a revoke issues a fresh certificate.
    fresh = provision(iot, request(tmp_path))
    assert fresh.created == ["certificate"]


@pytest.mark.parametrize(
    ("thing", "role", "message"),
    [("backend", "agent", "reserved"), ("dev-1", "backend", "must be named"),
     ("a/b", "agent", "not valid"), ("dev+1", "agent", "not valid")],
)
def test_names_are_checked(tmp_path: Path, thing: str, role: str, message: str) -> None:
    no_aws: Any = object()  # the check comes before any AWS call
    with pytest.raises(ProvisionError, match=message):
        provision(no_aws, request(tmp_path, thing, role=role))


# --- errors become one line ---------------------------------------------------------------------


def test_client_error_is_one_line(tmp_path: Path, aws_env: None) -> None:
    client = boto3.client("iot", region_name=REGION)
    with Stubber(client) as stub:
        stub.add_client_error("describe_thing", "AccessDeniedException",
                              "User: arn:x is not authorized\nto perform iot:DescribeThing")
        with pytest.raises(ProvisionError) as err:
            provision(client, request(tmp_path))
    text = str(err.value)
    assert "\n" not in text
    assert "DescribeThing failed: AccessDeniedException: User: arn:x is not authorized to" in text


def test_unreachable_endpoint_is_one_line(tmp_path: Path, aws_env: None) -> None:
    client = boto3.client("iot", region_name=REGION, endpoint_url="http://127.0.0.1:9",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(ProvisionError, match=r"cannot reach http://127\.0\.0\.1:9") as err:
        provision(client, request(tmp_path))
    assert "\n" not in str(err.value)


def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_missing_credentials_end_the_cli_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_credentials(monkeypatch, tmp_path)
    rc = main(["provision", "dev-1", "--region", REGION, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1
    assert err.startswith("edgefleet provision: error: provision: no AWS credentials found")


def test_missing_region_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    no_credentials(monkeypatch, tmp_path)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert main(["provision", "dev-1", "--out", str(tmp_path)]) == 2
    assert "no AWS region; pass --region" in capsys.readouterr().err


# --- the command line ------------------------------------------------------------------------------


def fake_root_ca(path: Path) -> Path:
    """A self-signed test certificate named like Amazon Root CA 1 (only the name is checked)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Amazon Root CA 1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def settings(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines() if not line.startswith("#"))


def test_cli_prints_the_agent_settings(
    aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "certs"
    with mock_aws():
        assert main(["provision", "dev-1", "--out", str(out_dir)]) == 0
        first = capsys.readouterr().out
        ca = fake_root_ca(tmp_path / "AmazonRootCA1.pem")
        assert main(["provision", "dev-1", "--out", str(out_dir), "--ca-file", str(ca)]) == 0
        second = capsys.readouterr().out
    values = settings(first)
    assert set(values) == {"EDGE_AGENT_THING_NAME", "EDGE_AGENT_ENDPOINT", "EDGE_AGENT_PORT",
                           "EDGE_AGENT_CERT_FILE", "EDGE_AGENT_KEY_FILE", "EDGE_AGENT_CA_FILE"}
    assert values["EDGE_AGENT_THING_NAME"] == "dev-1"
    assert values["EDGE_AGENT_PORT"] == "8883"
    assert values["EDGE_AGENT_ENDPOINT"].endswith(f".iot.{REGION}.amazonaws.com")
    assert Path(values["EDGE_AGENT_KEY_FILE"]).stat().st_mode & 0o777 == 0o600
    assert values["EDGE_AGENT_CA_FILE"] == str((out_dir / "AmazonRootCA1.pem").resolve())
    assert "amazontrust.com/repository/AmazonRootCA1.pem" in first
    assert "# dev-1: created thing, group, policy, certificate" in first
    assert "# dev-1: created nothing (all existed)" in second
    assert "Amazon Root CA 1 from" not in second
    assert settings(second)["EDGE_AGENT_CA_FILE"] == str(ca.resolve())


def test_cli_backend_role_and_revoke(
    aws_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with mock_aws():
        assert main(["provision", "backend", "--role", "backend", "--out", str(tmp_path)]) == 0
        values = settings(capsys.readouterr().out)
        iot = boto3.client("iot", region_name=REGION)
        assert iot.list_thing_groups()["thingGroups"] == []
        assert main(["provision", "--revoke", "backend"]) == 0
        out = capsys.readouterr().out
    assert values["EDGE_BACKEND_CLIENT_ID"] == "backend"
    assert "EDGE_BACKEND_KEY_FILE" in values
    assert out.startswith("# backend: revoked (INACTIVE, detached): ")
