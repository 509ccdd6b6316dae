"""The wire contract between agents and the backend (see ``docs/protocol.md``).

Topics follow AWS's topic design, ``dt/<application>/<thing name>/<kind>``:

- ``dt/edgefleet/<thing>/metrics``: :class:`MetricsMessage`, QoS 1, one or more samples.
- ``dt/edgefleet/<thing>/status``: :class:`StatusMessage`, QoS 1, ``online`` on connect and
  ``offline`` as the Last Will.

Every payload is UTF-8 JSON with ``"v": 1``. A message is at most 128 KiB (AWS IoT Core's
limit). ``protocol.schema.json`` beside this module is generated from these models
(``python -m edgefleet.wire.messages > src/edgefleet/wire/protocol.schema.json``) and a
test keeps the two in agreement.

Constants, topic helpers and the agent's own encoders live in the pydantic-free
:mod:`edgefleet.wire.base` (the edge agent imports only that) and are re-exported here.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.errors import ProtocolError
from edgefleet.wire.base import (
    APP,
    MAX_AGE_S,
    MAX_INTERVAL_S,
    MAX_MESSAGE_BYTES,
    MAX_SEQ,
    MAX_STREAM_LEN,
    METRIC_KEY_PATTERN,
    METRICS_FILTER,
    PROTOCOL_VERSION,
    STATUS_FILTER,
    THING_NAME_PATTERN,
    TOPIC_PREFIX,
    HealthDoc,
    encode_health,
    encode_status,
    is_valid_thing_name,
    metrics_topic,
    parse_topic,
    status_topic,
)

__all__ = [
    "APP",
    "MAX_MESSAGE_BYTES",
    "MAX_SEQ",
    "METRICS_FILTER",
    "METRIC_KEY_PATTERN",
    "PROTOCOL_VERSION",
    "STATUS_FILTER",
    "THING_NAME_PATTERN",
    "TOPIC_PREFIX",
    "AgentHealth",
    "HealthDoc",
    "MetricKey",
    "MetricsMessage",
    "Sample",
    "StatusMessage",
    "ThingName",
    "UnixTime",
    "decode",
    "encode",
    "encode_health",
    "encode_status",
    "is_valid_thing_name",
    "json_schema",
    "metrics_topic",
    "parse_topic",
    "status_topic",
]

MetricKey = Annotated[str, Field(pattern=METRIC_KEY_PATTERN)]
ThingName = Annotated[str, Field(pattern=THING_NAME_PATTERN, description="AWS IoT thing name")]
UnixTime = Annotated[
    float, Field(ge=0, le=32503680000, description="seconds since the Unix epoch, UTC")
]
# ``Literal[1]`` would let ``true`` and ``1.0`` through (they compare equal to 1).
Version = Annotated[int, Field(ge=1, le=1, description="protocol version",
                               json_schema_extra={"const": PROTOCOL_VERSION})]


class _Model(BaseModel):
    # strict: an integer field takes only a JSON integer (not "13", 13.0 or true), a number
    # field only a JSON number (not "5" or true), a string field only a string.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False, strict=True)


class Sample(_Model):
    """One reading of every enabled collector, taken at ``ts``."""

    seq: int = Field(ge=0, le=MAX_SEQ, description="per-device sequence number, gap-free")
    ts: UnixTime = Field(description="when the sample was TAKEN on the device")
    metrics: dict[MetricKey, float] = Field(
        description="metric key (family or family[instance]) to a finite number",
        max_length=4096,
        json_schema_extra={"propertyNames": {"pattern": METRIC_KEY_PATTERN}},
    )
    failed: list[str] = Field(
        default_factory=list, max_length=64, description="collectors that failed this round"
    )


class AgentHealth(_Model):
    """The agent's own state, sent with every metrics message."""

    # Counters are bounded like seq (2^53-1: exact in a double, in SQLite and in JSON
    # readers), so one device cannot turn a fleet-wide sum into an absurd figure.
    queue_depth: int = Field(ge=0, le=MAX_SEQ, description="samples waiting in the durable queue")
    queue_bytes: int = Field(ge=0, le=MAX_SEQ, description="bytes used by waiting samples")
    oldest_age_s: float = Field(
        ge=0, le=MAX_AGE_S, description="age of the oldest unsent sample"
    )
    dropped_total: int = Field(
        ge=0, le=MAX_SEQ, description="samples dropped because the queue was full"
    )
    publish_errors_total: int = Field(
        ge=0, le=MAX_SEQ, description="failed or refused publishes"
    )
    rss_bytes: int = Field(ge=0, le=MAX_SEQ, description="resident memory of the agent process")
    agent_version: str = Field(max_length=64, description="edgefleet version of the agent")
    uncommitted: int | None = Field(
        default=None, ge=0, le=MAX_SEQ,
        description="samples sent but not yet committed by the backend's watermark",
    )


class MetricsMessage(_Model):
    """Payload of ``dt/edgefleet/<thing>/metrics``."""

    v: Version
    device_id: ThingName = Field(description="must equal the thing name in the topic")
    stream: str = Field(
        min_length=1,
        max_length=MAX_STREAM_LEN,
        description="id of the sequence stream; a new one means the device's seq restarted",
    )
    sent_at: UnixTime = Field(description="when this message was built for sending")
    samples: list[Sample] = Field(min_length=1, max_length=20000)
    health: AgentHealth | None = None
    held_from: int | None = Field(
        default=None, ge=0, le=MAX_SEQ,
        description="the lowest seq of the stream the agent still holds: a lower seq the "
        "backend lacks is gone for good. Present only when the agent keeps samples until the "
        "backend's watermark (cmd/edgefleet/<thing>/ack) commits them",
    )


class AckMessage(_Model):
    """Payload of ``cmd/edgefleet/<thing>/ack``, backend to device: the commit watermark."""

    v: Version
    stream: str = Field(min_length=1, max_length=MAX_STREAM_LEN)
    through: int = Field(
        ge=0, le=MAX_SEQ, description="every seq up to this one is stored or gone for good"
    )


class StatusMessage(_Model):
    """Payload of ``dt/edgefleet/<thing>/status``: ``online`` on connect, LWT ``offline``."""

    v: Version
    device_id: ThingName
    state: Literal["online", "offline"]
    ts: UnixTime = Field(description="when the agent connected (also for the Last Will)")
    agent_version: str | None = Field(default=None, max_length=64)
    interval_s: float | None = Field(
        default=None, gt=0, le=MAX_INTERVAL_S, description="sampling interval"
    )


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError("oversized", f"{len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("malformed", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("malformed", "payload is not a JSON object")
    version = doc.get("v")
    if version != PROTOCOL_VERSION:
        raise ProtocolError("unknown_version", f"v={version!r}, this backend speaks v=1")
    return doc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "payload"
    return f"{where}: {err['msg']}"


_TOPICS: dict[str, tuple[str, str]] = {}  # valid topics seen -> (thing, kind)
TOPIC_CACHE_MAX = 100_000


def _topic(topic: str) -> tuple[str, str]:
    """:func:`parse_topic`, remembered for valid topics (each device's repeat every message);
    the cache is emptied when full rather than grown."""
    found = _TOPICS.get(topic)
    if found is None:
        found = parse_topic(topic)  # raises bad_topic: never cached
        if len(_TOPICS) >= TOPIC_CACHE_MAX:
            _TOPICS.clear()
        _TOPICS[topic] = found
    return found


def decode(topic: str, payload: bytes) -> MetricsMessage | StatusMessage:
    """Validate one received message; raise :class:`ProtocolError` with a counted reason."""
    thing, kind = _topic(topic)
    model: type[MetricsMessage] | type[StatusMessage] = (
        MetricsMessage if kind == "metrics" else StatusMessage
    )
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ProtocolError("oversized", f"{len(payload)} bytes > {MAX_MESSAGE_BYTES}")
    try:  # fast path: parse and validate in one pass (pydantic-core, no Python wrapper)
        msg: MetricsMessage | StatusMessage = model.__pydantic_validator__.validate_json(payload)
    except ValidationError:
        msg = _classify(model, payload)  # slow path: find the reason to count
    if msg.device_id != thing:
        raise ProtocolError(
            "spoofed", f"device_id {msg.device_id!r} published on topic of {thing!r}"
        )
    return msg


def _classify(
    model: type[MetricsMessage] | type[StatusMessage], payload: bytes
) -> MetricsMessage | StatusMessage:
    _load(payload)  # the reasons other than a field breaking the schema
    try:  # the JSON mode again, so the detail names what the fast path refused
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise ProtocolError("malformed", _first_error(exc)) from None


def encode(msg: BaseModel) -> bytes:
    """Serialise a message compactly (no whitespace), as agents send it."""
    return msg.model_dump_json(exclude_none=True).encode()


def json_schema() -> dict[str, Any]:
    """The JSON Schema document for both payloads, as shipped in protocol.schema.json."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://edgefleet.dev/schema/protocol-v1.json",
        "title": "edgefleet wire protocol v1",
        "oneOf": [
            {"$ref": "#/$defs/MetricsMessage"},
            {"$ref": "#/$defs/StatusMessage"},
            {"$ref": "#/$defs/AckMessage"},
        ],
        "$defs": {
            **MetricsMessage.model_json_schema(ref_template="#/$defs/{model}")["$defs"],
            "MetricsMessage": _strip_defs(MetricsMessage.model_json_schema(
                ref_template="#/$defs/{model}")),
            "StatusMessage": StatusMessage.model_json_schema(ref_template="#/$defs/{model}"),
            "AckMessage": AckMessage.model_json_schema(ref_template="#/$defs/{model}"),
        },
    }


def _strip_defs(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "$defs"}


if __name__ == "__main__":  # pragma: no cover - regenerates the shipped schema
    import sys

    sys.stdout.write(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
