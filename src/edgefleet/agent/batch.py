"""Building metrics messages from queued samples without re-parsing their JSON."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Protocol

from edgefleet.agent.contracts import QueuedSample
from edgefleet.wire.base import (
    COMPACT,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    HealthDoc,
    encode_health,
)

# Room kept free for the header, the health object and the JSON punctuation.
_HEADER_ROOM = 1024
_PER_SAMPLE = 48


class HealthModel(Protocol):
    """A health object that encodes itself, e.g. ``protocol.AgentHealth`` (the simulator)."""

    def model_dump_json(self) -> str:
        """Compact JSON of the object."""
        ...


Health = HealthDoc | HealthModel
"""The ``health`` of a message: the agent's plain dict, or a model with the same fields."""


def sample_body(metrics: dict[str, float], failed: Sequence[str]) -> bytes:
    """The stored form of one sample: JSON without seq and ts (spliced in when sending)."""
    doc: dict[str, object] = {"metrics": metrics}
    if failed:
        doc["failed"] = list(failed)
    return COMPACT.encode(doc).encode()


def _sample_json(sample: QueuedSample) -> bytes:
    return b'{"seq":%d,"ts":%s,%s' % (sample.seq, repr(sample.ts).encode(), sample.body[1:])


def fit(samples: Sequence[QueuedSample], max_bytes: int) -> list[QueuedSample]:
    """The longest prefix of ``samples`` whose message stays under ``max_bytes``."""
    budget = min(max_bytes, MAX_MESSAGE_BYTES) - _HEADER_ROOM
    out: list[QueuedSample] = []
    used = 0
    for sample in samples:
        size = len(sample.body) + _PER_SAMPLE
        if out and used + size > budget:
            break
        out.append(sample)
        used += size
    return out


def too_big(sample: QueuedSample) -> bool:
    """True when a single sample can never fit in one message."""
    return len(sample.body) + _PER_SAMPLE > MAX_MESSAGE_BYTES - _HEADER_ROOM


def build_message(
    device_id: str,
    stream: str,
    samples: Sequence[QueuedSample],
    health: Health | None,
    sent_at: float | None = None,
    *,
    held_from: int | None = None,
) -> bytes:
    """Encode one ``MetricsMessage`` (protocol v1) from queued samples; ``held_from``: the
    agent waits for the backend's watermark (docs/protocol.md)."""
    head = COMPACT.encode(
        {
            "v": PROTOCOL_VERSION,
            "device_id": device_id,
            "stream": stream,
            "sent_at": round(time.time() if sent_at is None else sent_at, 3),
        }
    ).encode()
    parts = [head[:-1], b',"samples":[', b",".join(_sample_json(s) for s in samples), b"]"]
    if isinstance(health, dict):
        parts += [b',"health":', encode_health(health)]
    elif health is not None:
        parts += [b',"health":', health.model_dump_json().encode()]
    if held_from is not None:
        parts.append(b',"held_from":%d' % held_from)
    parts.append(b"}")
    return b"".join(parts)
