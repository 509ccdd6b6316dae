"""AWS IoT policy documents for agents and the backend, generated from
:mod:`edgefleet.wire.policy` (the source of the Mosquitto ACL as well).

- ``edgefleet-agent`` (attached to every device certificate): connect only with the client id
  equal to the thing name the certificate is attached to, publish only to
  ``dt/edgefleet/<that thing>/{metrics,status}``, subscribe to and receive only
  ``cmd/edgefleet/<that thing>/ack``; nothing else.
- ``edgefleet-backend`` (attached to the backend's certificate): connect as the backend
  identity or one of its numbered connections (``backend-1`` ... ), subscribe to every
  device's metrics and status, directly or as the shared subscription
  ``$share/edgefleet/<filter>``, receive them, and publish watermarks to
  ``cmd/edgefleet/<any thing>/ack``.

``${iot:Connection.Thing.ThingName}`` is resolved by AWS IoT only when the client id equals
the name of a thing to which the connecting certificate is attached; otherwise statements
that use it match nothing. IoT resource patterns know only ``*`` (any characters, ``/``
included) and ``?``: ``+`` and ``#`` are literal characters there, so an MQTT filter level
``+`` becomes ``*`` (see docs/production.md for what that widens and why it is harmless).

:func:`cloudformation_form` turns a document into the form used in ``infra/edgefleet.yaml``
(``Fn::Sub`` with ``${AWS::Region}`` etc.); a test keeps the template equal to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgefleet.wire.policy import (
    BACKEND_IDENTITY,
    backend_connection_id,
    backend_filters,
    backend_publish_filters,
    backend_shared_filters,
    device_command_topics,
    device_topics,
)

THING_NAME_VAR = "${iot:Connection.Thing.ThingName}"
IS_ATTACHED_KEY = "iot:Connection.Thing.IsAttached"
AGENT_POLICY_NAME = "edgefleet-agent"
BACKEND_POLICY_NAME = "edgefleet-backend"
THING_GROUP_NAME = "edgefleet-devices"
POLICY_VERSION = "2012-10-17"
# The backend's K connections use the client ids ``backend-1`` ... ``backend-K`` with the
# one backend certificate (attached to the thing ``backend``, so IsAttached cannot hold for
# them; the policy is attached to no other certificate); ``?`` is one character: K <= 9.
CONNECTION_NUMBER = "?"

Document = dict[str, Any]


def iot_arn(kind: str, name: str, *, region: str, account: str, partition: str = "aws") -> str:
    """``arn:aws:iot:<region>:<account>:<kind>/<name>`` (kind: client, topic, topicfilter)."""
    return f"arn:{partition}:iot:{region}:{account}:{kind}/{name}"


def filter_to_pattern(topic_filter: str) -> str:
    """An MQTT filter as an IoT resource pattern: each ``+`` level becomes ``*``."""
    if "#" in topic_filter:
        raise ValueError(f"filter {topic_filter!r}: '#' has no safe IoT policy equivalent")
    return "/".join("*" if level == "+" else level for level in topic_filter.split("/"))


def _statement(action: str, resources: list[str], *, attached: bool = False) -> dict[str, Any]:
    stmt: dict[str, Any] = {"Effect": "Allow", "Action": action, "Resource": resources}
    if attached:
        stmt["Condition"] = {"Bool": {IS_ATTACHED_KEY: "true"}}
    return stmt


def agent_policy_document(region: str, account: str, *, partition: str = "aws") -> Document:
    """The policy for device certificates: its own client id, its own topics."""

    def arn(kind: str, name: str) -> str:
        return iot_arn(kind, name, region=region, account=account, partition=partition)

    commands = device_command_topics(THING_NAME_VAR)
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            _statement("iot:Connect", [arn("client", THING_NAME_VAR)], attached=True),
            _statement("iot:Publish", [arn("topic", t) for t in device_topics(THING_NAME_VAR)]),
            _statement("iot:Subscribe", [arn("topicfilter", t) for t in commands]),
            _statement("iot:Receive", [arn("topic", t) for t in commands]),
        ],
    }


def backend_policy_document(
    region: str,
    account: str,
    *,
    backend_identity: str = BACKEND_IDENTITY,
    partition: str = "aws",
) -> Document:
    """The policy for the backend certificate: subscribe to and receive the fleet's topics
    (directly or shared among its connections), publish the devices' watermarks."""

    def arn(kind: str, name: str) -> str:
        return iot_arn(kind, name, region=region, account=account, partition=partition)

    patterns = [filter_to_pattern(flt) for flt in backend_filters()]
    shared = [filter_to_pattern(flt) for flt in backend_shared_filters()]
    publish = [filter_to_pattern(flt) for flt in backend_publish_filters()]
    numbered = backend_connection_id(backend_identity, CONNECTION_NUMBER)
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            _statement("iot:Connect", [arn("client", backend_identity)], attached=True),
            _statement("iot:Connect", [arn("client", numbered)]),
            _statement("iot:Subscribe", [arn("topicfilter", p) for p in patterns + shared]),
            _statement("iot:Receive", [arn("topic", p) for p in patterns]),
            _statement("iot:Publish", [arn("topic", p) for p in publish]),
        ],
    }


def policy_documents(region: str, account: str, *, partition: str = "aws") -> dict[str, Document]:
    """Both documents by policy name."""
    return {
        AGENT_POLICY_NAME: agent_policy_document(region, account, partition=partition),
        BACKEND_POLICY_NAME: backend_policy_document(region, account, partition=partition),
    }


def cloudformation_form(make: Callable[..., Document]) -> Document:
    """The document ``make(region, account, partition=...)`` as CloudFormation writes it."""
    doc = make("${AWS::Region}", "${AWS::AccountId}", partition="${AWS::Partition}")

    def sub(resource: str) -> dict[str, str]:
        return {"Fn::Sub": resource.replace("${iot:", "${!iot:")}

    statements = [
        {**stmt, "Resource": [sub(r) for r in stmt["Resource"]]} for stmt in doc["Statement"]
    ]
    return {**doc, "Statement": statements}
