"""Plain records passed between ingest, the fleet state, the store and their callers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgefleet.wire.messages import AgentHealth, StatusMessage

Status = Literal["online", "offline"]
Source = Literal["raw", "buckets", "mixed", "none"]


@dataclass(frozen=True, slots=True)
class AcceptedSample:
    """A sample that passed validation and de-duplication: store it and evaluate it."""

    device: str
    seq: int
    ts: float  # when the sample was taken on the device
    metrics: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """What the backend knows about one device. Times are Unix seconds.

    ``last_seen`` and ``status_ts`` are the backend's clock (arrival); ``last_sample_ts`` and
    ``session_ts`` are the device's clock.
    """

    device: str
    first_seen: float
    last_seen: float  # arrival of the last metrics or online message
    last_sample_ts: float | None = None  # newest sample ts received
    status: Status = "offline"
    status_ts: float = 0.0  # when ``status`` last changed
    session_ts: float | None = None  # ts of the newest ``online`` status (agent connect)
    health: Mapping[str, Any] | None = None  # the agent's last reported AgentHealth
    health_sent_at: float | None = None  # sent_at of the message that carried ``health``
    agent_version: str | None = None
    interval_s: float | None = None  # sampling interval from the online status
    lost_samples: int = 0  # seqs that never arrived (from the dedup state)

    @property
    def agent_dropped(self) -> int:
        """Samples the agent reports it dropped (queue full, oversized, corrupt store)."""
        return int((self.health or {}).get("dropped_total", 0))


@dataclass(frozen=True, slots=True)
class History:
    """A device's metrics over ``[start, end)``, as chart-ready columns.

    ``step_s == 0``: one point per raw sample at its own ts (min = max = avg). Otherwise
    each point is the bucket ``[ts, ts + step_s)`` with the average, minimum and maximum of
    every sample in it. Empty buckets are left out; a key missing in a point is ``None``.
    """

    device: str
    start: float
    end: float
    step_s: float
    source: Source  # which tables the points came from
    ts: list[float]
    avg: dict[str, list[float | None]]
    min: dict[str, list[float | None]]
    max: dict[str, list[float | None]]


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one message brought. ``kind`` is ``metrics``, ``status`` or ``rejected``."""

    kind: Literal["metrics", "status", "rejected"]
    device: str | None = None
    samples: tuple[AcceptedSample, ...] = ()  # new samples, in message order
    duplicates: int = 0
    refused: int = 0  # samples refused (a retired stream's)
    status: StatusMessage | None = None
    health: AgentHealth | None = None
    sent_at: float | None = None
    stream_reset: bool = False
    reason: str | None = None  # why it was rejected


@dataclass(frozen=True, slots=True)
class IngestCounters:
    """Figures for Prometheus. ``*_total`` only grow; the others are gauges."""

    messages_total: int = 0  # every message handled, rejected ones included
    samples_total: int = 0  # new samples accepted
    duplicates_total: int = 0
    stream_resets_total: int = 0
    rejected_total: Mapping[str, int] = field(default_factory=dict)  # messages, by reason
    refused_keys_total: Mapping[str, int] = field(default_factory=dict)  # keys, by reason
    refused_samples_total: Mapping[str, int] = field(default_factory=dict)  # by reason
    anomalies_total: Mapping[str, int] = field(default_factory=dict)  # by kind
    lost_samples: int = 0  # gauge: falls when late samples fill a gap
    agent_dropped: int = 0  # gauge: sum of the agents' last reported ``dropped_total``
