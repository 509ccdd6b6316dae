"""The pydantic-free half of the wire contract (see ``docs/protocol.md``).

Constants, topics and thing names, plus the two payload parts an agent builds itself (its
status message and its health object), encoded with :mod:`json`. The edge agent's
long-running process imports only this module, never :mod:`edgefleet.wire.messages`,
whose pydantic models cost it about 12 MiB of RSS. ``protocol`` re-exports everything here
and stays the one place that VALIDATES messages; ``tests/agent/test_agent_lean.py`` checks
that what these encoders produce is exactly what the models accept and encode.
"""

from __future__ import annotations

import json
import re
from typing import Literal, TypedDict

from edgefleet.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 128 * 1024
APP = "edgefleet"
TOPIC_PREFIX = f"dt/{APP}"
METRICS_FILTER = f"{TOPIC_PREFIX}/+/metrics"
STATUS_FILTER = f"{TOPIC_PREFIX}/+/status"
# Messages TO a device (AWS's topic design: ``cmd/`` for commands): the backend's commit
# watermark on ``cmd/edgefleet/<thing>/ack``.
COMMAND_PREFIX = f"cmd/{APP}"
ACK_FILTER = f"{COMMAND_PREFIX}/+/ack"
# MQTT5 shared subscriptions (``$share/<group>/<filter>``): each message goes to one member of
# the group, so K backend connections split the fleet's traffic (docs/production.md).
SHARE_GROUP = APP

# AWS IoT thing names: 1-128 of [a-zA-Z0-9:_-]. MQTT wildcards and '/' are excluded by this.
THING_NAME_PATTERN = r"^[a-zA-Z0-9:_-]{1,128}$"
_THING_RE = re.compile(THING_NAME_PATTERN)
# A metric key is ``family`` or ``family[instance]``: ``cpu.percent``, ``disk.used_percent[/]``.
METRIC_KEY_PATTERN = r"^[a-z][a-z0-9_.]{0,63}(\[[^\[\]]{1,200}\])?$"
# The highest seq on the wire: 2^53 - 1, exact in a double, in JavaScript and in SQLite, so
# no figure derived from seqs (spans, loss) can leave SQLite's 64-bit integers.
MAX_SEQ = 2**53 - 1
MAX_STREAM_LEN = 64
# The longest sampling interval a status may announce (the agent allows at most 1 h) and the
# oldest unsent sample an agent may report: bounded so that no device can make the fleet's
# staleness windows or figures absurd.
MAX_INTERVAL_S = 86400.0
MAX_AGE_S = 10 * 366 * 86400.0

StatusState = Literal["online", "offline"]


def split_key(key: str) -> tuple[str, str | None]:
    """A metric key's family and instance: ``disk.used_percent[/]`` -> ``("disk.used_percent",
    "/")``, ``cpu.percent`` -> ``("cpu.percent", None)``. The one place that parses keys."""
    family, bracket, rest = key.partition("[")
    return (family, rest[:-1]) if bracket else (family, None)


class HealthDoc(TypedDict):
    """The ``health`` object of a metrics message, as ``protocol.AgentHealth`` (same order)."""

    queue_depth: int
    queue_bytes: int
    oldest_age_s: float
    dropped_total: int
    publish_errors_total: int
    rss_bytes: int
    agent_version: str
    uncommitted: int


def metrics_topic(thing: str) -> str:
    """Topic on which ``thing`` publishes its metrics."""
    return f"{TOPIC_PREFIX}/{thing}/metrics"


def status_topic(thing: str) -> str:
    """Topic on which ``thing`` publishes its online/offline status."""
    return f"{TOPIC_PREFIX}/{thing}/status"


def ack_topic(thing: str) -> str:
    """Topic on which the backend tells ``thing`` what it has committed."""
    return f"{COMMAND_PREFIX}/{thing}/ack"


def shared(topic_filter: str, group: str = SHARE_GROUP) -> str:
    """``topic_filter`` as an MQTT5 shared subscription of ``group``."""
    return f"$share/{group}/{topic_filter}"


def is_valid_thing_name(name: str) -> bool:
    """True when ``name`` is a legal AWS IoT thing name (and so safe inside a topic)."""
    return bool(_THING_RE.match(name))


def parse_topic(topic: str) -> tuple[str, str]:
    """Split ``dt/edgefleet/<thing>/<kind>`` into ``(thing, kind)`` or raise ``bad_topic``."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != TOPIC_PREFIX:
        raise ProtocolError("bad_topic", f"topic {topic!r} is not {TOPIC_PREFIX}/<thing>/<kind>")
    thing, kind = parts[2], parts[3]
    if kind not in ("metrics", "status") or not is_valid_thing_name(thing):
        raise ProtocolError("bad_topic", f"topic {topic!r} has no valid thing/kind")
    return thing, kind


COMPACT = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
"""Compact JSON, NaN refused; built once (``json.dumps`` with options builds an encoder per
call)."""


def _compact(doc: object) -> bytes:
    return COMPACT.encode(doc).encode()


def encode_health(health: HealthDoc) -> bytes:
    """The health object as compact JSON (what ``AgentHealth.model_dump_json()`` gives)."""
    return _compact(health)


def encode_ack(stream: str, through: int) -> bytes:
    """The backend's commit watermark for one device (``cmd/edgefleet/<thing>/ack``): every
    seq up to and including ``through`` of ``stream`` is stored, or gone for good."""
    return _compact({"v": PROTOCOL_VERSION, "stream": stream, "through": through})


def decode_ack(payload: bytes) -> tuple[str, int]:
    """``(stream, through)`` of a watermark; ``ProtocolError("malformed")`` naming what is
    wrong otherwise (strict: ``through`` must be a JSON integer 0..MAX_SEQ)."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("malformed", "watermark is not JSON") from None
    if not isinstance(doc, dict) or doc.get("v") != PROTOCOL_VERSION or type(doc["v"]) is not int:
        raise ProtocolError("malformed", "watermark is not a v1 object")
    stream, through = doc.get("stream"), doc.get("through")
    if not isinstance(stream, str) or not 1 <= len(stream) <= MAX_STREAM_LEN:
        raise ProtocolError("malformed", f"watermark stream {stream!r} is not a stream id")
    if type(through) is not int or not 0 <= through <= MAX_SEQ:
        raise ProtocolError("malformed", f"watermark through={through!r} is not a seq")
    return stream, through


def encode_status(
    device_id: str,
    state: StatusState,
    ts: float,
    agent_version: str | None = None,
    interval_s: float | None = None,
) -> bytes:
    """A ``StatusMessage`` as compact JSON, ``None`` fields left out (as ``protocol.encode``)."""
    doc: dict[str, object] = {
        "v": PROTOCOL_VERSION, "device_id": device_id, "state": state, "ts": float(ts),
    }
    if agent_version is not None:
        doc["agent_version"] = agent_version
    if interval_s is not None:
        doc["interval_s"] = float(interval_s)
    return _compact(doc)
