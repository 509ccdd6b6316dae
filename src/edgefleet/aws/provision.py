"""``edgefleet provision``: register a device (or the backend) with AWS IoT, idempotently.

One run makes sure that the thing exists, that a device is in the fleet's thing group, that
the policy exists, and that one ACTIVE certificate is attached to the thing and carries the
policy. A second run creates nothing and says so; ``rotate`` adds a new certificate and
leaves the old ones active until they are revoked. With a CSR the private key never leaves
the device. :func:`revoke` deactivates certificates and detaches them from policies and thing.

Files: ``<out>/<thing>.cert.pem`` and ``<out>/<thing>.private.key`` (mode 0600). The Amazon
Root CA 1 certificate is not downloaded or embedded: the user supplies it (``ca_file``).

Every AWS failure becomes a :class:`ProvisionError` with a one-line message.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgefleet.aws.policies import (
    AGENT_POLICY_NAME,
    BACKEND_POLICY_NAME,
    THING_GROUP_NAME,
    agent_policy_document,
    backend_policy_document,
)
from edgefleet.common.logs import kv
from edgefleet.errors import EdgefleetError
from edgefleet.wire.messages import is_valid_thing_name
from edgefleet.wire.policy import BACKEND_IDENTITY, backend_identities

if TYPE_CHECKING:
    from mypy_boto3_iot import IoTClient

log = logging.getLogger(__name__)

Role = Literal["agent", "backend"]


class ProvisionError(EdgefleetError):
    """Provisioning failed (an AWS error, a bad name or file); the message is one line."""


@dataclass(frozen=True)
class ProvisionRequest:
    """What to provision; ``csr_file`` makes AWS sign a CSR instead of creating a key."""

    thing: str
    out_dir: Path
    role: Role = "agent"
    group: str = THING_GROUP_NAME
    csr_file: Path | None = None
    rotate: bool = False

    @property
    def policy_name(self) -> str:
        return BACKEND_POLICY_NAME if self.role == "backend" else AGENT_POLICY_NAME

    @property
    def cert_file(self) -> Path:
        return self.out_dir / f"{self.thing}.cert.pem"

    @property
    def key_file(self) -> Path:
        return self.out_dir / f"{self.thing}.private.key"


@dataclass
class ProvisionResult:
    """What exists now, and what this run created (``thing``, ``group``, ``policy``, ...)."""

    thing: str
    endpoint: str
    certificate_id: str
    cert_file: Path
    key_file: Path | None
    created: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Turn boto3/botocore exceptions into a one-line :class:`ProvisionError`."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
    )

    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        detail = f"{err.get('Code', '?')}: {err.get('Message', '')}"
        msg = f"{what}: AWS {exc.operation_name} failed: {detail}"
        raise ProvisionError(_one_line(msg)) from exc
    except NoCredentialsError as exc:
        raise ProvisionError(
            f"{what}: no AWS credentials found; set AWS_PROFILE (or --profile) "
            "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from exc
    except NoRegionError as exc:
        raise ProvisionError(f"{what}: no AWS region; pass --region or set AWS_REGION") from exc
    except EndpointConnectionError as exc:
        url = exc.kwargs.get("endpoint_url", "the AWS endpoint")
        msg = f"{what}: cannot reach {url}; check the network, proxy and region"
        raise ProvisionError(msg) from exc
    except BotoCoreError as exc:
        raise ProvisionError(_one_line(f"{what}: {exc}")) from exc


def iot_client(region: str | None = None, profile: str | None = None) -> IoTClient:
    """A boto3 IoT client with short timeouts and few retries."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ProvisionError("boto3 is not installed: pip install 'edgefleet[aws]'") from exc
    with aws_errors("provision"):
        session = boto3.Session(region_name=region, profile_name=profile)
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3})
        return session.client("iot", config=config)


def _check_request(req: ProvisionRequest) -> None:
    if not is_valid_thing_name(req.thing):
        raise ProvisionError(f"thing name {req.thing!r} is not valid (1-128 of [a-zA-Z0-9:_-])")
    if req.role == "agent" and req.thing in backend_identities():
        raise ProvisionError(f"thing name {req.thing!r} is reserved for the backend identity")
    if req.role == "backend" and req.thing != BACKEND_IDENTITY:
        raise ProvisionError(f"the backend identity must be named {BACKEND_IDENTITY!r}")


def provision(iot: IoTClient, req: ProvisionRequest) -> ProvisionResult:
    """Create what is missing; see the module docstring. Safe to run again."""
    _check_request(req)
    csr = _read_csr(req.csr_file) if req.csr_file else None
    _prepare_out_dir(req.out_dir)
    created: list[str] = []
    notes: list[str] = []
    with aws_errors("provision"):
        thing_arn = _ensure_thing(iot, req.thing, created)
        if req.role == "agent":
            _ensure_group(iot, req.group, req.thing, created)
        _ensure_policy(iot, req, thing_arn, created, notes)
        cert_id, cert_arn = _certificate(iot, req, csr, created, notes)
        iot.attach_policy(policyName=req.policy_name, target=cert_arn)
        iot.attach_thing_principal(thingName=req.thing, principal=cert_arn)
        endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    log.info("provisioned", extra=kv(thing=req.thing, certificate=cert_id[:12], created=created))
    return ProvisionResult(
        thing=req.thing, endpoint=endpoint, certificate_id=cert_id, cert_file=req.cert_file,
        key_file=None if csr else req.key_file, created=created, notes=notes,
    )


def _ensure_thing(iot: IoTClient, thing: str, created: list[str]) -> str:
    try:
        return iot.describe_thing(thingName=thing)["thingArn"]
    except iot.exceptions.ResourceNotFoundException:
        created.append("thing")
        return iot.create_thing(thingName=thing)["thingArn"]


def _ensure_group(iot: IoTClient, group: str, thing: str, created: list[str]) -> None:
    try:
        iot.describe_thing_group(thingGroupName=group)
    except iot.exceptions.ResourceNotFoundException:
        iot.create_thing_group(thingGroupName=group)
        created.append("group")
    iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)


def _ensure_policy(
    iot: IoTClient, req: ProvisionRequest, thing_arn: str, created: list[str], notes: list[str]
) -> None:
    _, partition, _, region, account, _ = thing_arn.split(":", 5)
    make = backend_policy_document if req.role == "backend" else agent_policy_document
    wanted = make(region, account, partition=partition)
    try:
        current = json.loads(iot.get_policy(policyName=req.policy_name)["policyDocument"])
    except iot.exceptions.ResourceNotFoundException:
        iot.create_policy(policyName=req.policy_name, policyDocument=json.dumps(wanted))
        created.append("policy")
        return
    if current != wanted:
        notes.append(f"policy {req.policy_name} exists with another document; left unchanged")


def _active_certificates(iot: IoTClient, thing: str) -> list[tuple[str, str]]:
    """(id, arn) of the thing's ACTIVE certificates, newest first."""
    found: list[tuple[Any, str, str]] = []
    for arn in _certificate_arns(iot, thing):
        desc = iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])
        cert = desc["certificateDescription"]
        if cert.get("status") == "ACTIVE":
            found.append((cert.get("creationDate"), cert["certificateId"], arn))
    found.sort(key=lambda item: str(item[0]), reverse=True)
    return [(cert_id, arn) for _, cert_id, arn in found]


def _certificate_arns(iot: IoTClient, thing: str) -> list[str]:
    pages = iot.get_paginator("list_thing_principals").paginate(thingName=thing)
    return [p for page in pages for p in page.get("principals", []) if ":cert/" in p]


def _certificate(
    iot: IoTClient, req: ProvisionRequest, csr: str | None, created: list[str],
    notes: list[str],
) -> tuple[str, str]:
    active = _active_certificates(iot, req.thing)
    if active and not req.rotate:
        cert_id, cert_arn = active[0]
        notes.append(f"kept certificate {cert_id[:12]}; no new key (use --rotate for one)")
        if csr is not None:
            notes.append("the CSR was not used: an ACTIVE certificate exists (use --rotate)")
        _restore_files(iot, req, cert_id, csr is not None, notes)
        return cert_id, cert_arn
    if csr is not None:
        resp: Any = iot.create_certificate_from_csr(certificateSigningRequest=csr, setAsActive=True)
    else:
        resp = iot.create_keys_and_certificate(setAsActive=True)
        write_file(req.key_file, resp["keyPair"]["PrivateKey"].encode(), 0o600)
    write_file(req.cert_file, resp["certificatePem"].encode(), 0o644)
    created.append("certificate")
    if active:
        old = ", ".join(cert_id[:12] for cert_id, _ in active)
        notes.append(f"rotated; still ACTIVE: {old} (revoke with --revoke --cert-id ID)")
    return resp["certificateId"], resp["certificateArn"]


def _restore_files(
    iot: IoTClient, req: ProvisionRequest, cert_id: str, csr: bool, notes: list[str]
) -> None:
    if not req.cert_file.exists():
        pem = iot.describe_certificate(certificateId=cert_id)["certificateDescription"]
        write_file(req.cert_file, pem.get("certificatePem", "").encode(), 0o644)
        notes.append(f"wrote the existing certificate to {req.cert_file}")
    if not csr and not req.key_file.exists():
        notes.append(
            f"{req.key_file} is missing and AWS never returns a private key again: "
            "copy it from where it was first written, or use --rotate"
        )


def revoke(iot: IoTClient, thing: str, cert_id: str | None = None) -> list[str]:
    """Deactivate the thing's certificates (or one), detach policies and thing; return ids."""
    revoked: list[str] = []
    with aws_errors("revoke"):
        try:
            iot.describe_thing(thingName=thing)
        except iot.exceptions.ResourceNotFoundException:
            raise ProvisionError(f"revoke: there is no thing named {thing!r}") from None
        for arn in _certificate_arns(iot, thing):
            this_id = arn.rsplit("/", 1)[1]
            if cert_id is None or this_id.startswith(cert_id):
                _revoke_one(iot, thing, this_id, arn)
                revoked.append(this_id)
    if cert_id is not None and not revoked:
        raise ProvisionError(f"revoke: no certificate {cert_id!r} is attached to {thing!r}")
    return revoked


def _revoke_one(iot: IoTClient, thing: str, cert_id: str, arn: str) -> None:
    iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
    pages = iot.get_paginator("list_attached_policies").paginate(target=arn)
    for policy in [p for page in pages for p in page.get("policies", [])]:
        iot.detach_policy(policyName=policy["policyName"], target=arn)
    iot.detach_thing_principal(thingName=thing, principal=arn)
    log.info("revoked", extra=kv(thing=thing, certificate=cert_id[:12]))


def _prepare_out_dir(path: Path) -> None:
    """Fail before any AWS call if the key could not be written (AWS never resends it)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"cannot create {path}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ProvisionError(f"{path} is not writable")


def _read_csr(path: Path) -> str:
    from cryptography import x509

    try:
        data = path.read_bytes()
        x509.load_pem_x509_csr(data)
    except OSError as exc:
        raise ProvisionError(f"cannot read CSR {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ProvisionError(f"{path} is not a PEM certificate signing request") from exc
    return data.decode()


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with ``mode`` from the first byte (0600 for private keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.chmod(mode)
    tmp.replace(path)


