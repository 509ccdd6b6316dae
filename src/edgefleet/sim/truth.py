"""The simulator's ground truth: exactly what each device had acknowledged by the broker.

The fault suite compares the backend's state with this record. A sample counts as ``acked``
only once a PUBACK with a reason below 128 came back for a message carrying it; samples
taken but not (yet) acknowledged are listed as ``pending``; samples dropped because the
device's in-memory backlog was full are listed as ``dropped``. The file format is described
in ``docs/simulator.md``.
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.sim.model import Spike

TRUTH_VERSION = 1


class SeqRanges:
    """A set of non-negative integers kept as sorted, merged ``[first, last]`` ranges."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.count = 0

    def add(self, seq: int) -> bool:
        """Add ``seq``; return False when it was already present."""
        i = bisect.bisect_right(self._starts, seq) - 1
        if i >= 0 and self._ends[i] >= seq:
            return False
        self.count += 1
        joins_left = i >= 0 and self._ends[i] == seq - 1
        joins_right = i + 1 < len(self._starts) and self._starts[i + 1] == seq + 1
        if joins_left and joins_right:
            self._ends[i] = self._ends.pop(i + 1)
            self._starts.pop(i + 1)
        elif joins_left:
            self._ends[i] = seq
        elif joins_right:
            self._starts[i + 1] = seq
        else:
            self._starts.insert(i + 1, seq)
            self._ends.insert(i + 1, seq)
        return True

    def __contains__(self, seq: int) -> bool:
        i = bisect.bisect_right(self._starts, seq) - 1
        return i >= 0 and self._ends[i] >= seq

    def ranges(self) -> list[list[int]]:
        return [[a, b] for a, b in zip(self._starts, self._ends, strict=True)]

    @property
    def first(self) -> int | None:
        return self._starts[0] if self._starts else None

    @property
    def last(self) -> int | None:
        return self._ends[-1] if self._ends else None


@dataclass(slots=True)
class OfflineWindow:
    """A dropout: disconnected (Will sent) from ``start`` until ``end``."""

    start: float
    end: float | None
    buffered: bool  # True: the device kept sampling and replays a backlog on return


@dataclass(slots=True)
class DeviceTruth:
    """Everything one simulated device did, counted exactly."""

    device: str
    stream: str
    acked: SeqRanges = field(default_factory=SeqRanges)
    dropped: SeqRanges = field(default_factory=SeqRanges)
    taken: int = 0
    messages: int = 0
    publish_errors: int = 0
    connects: int = 0
    spikes: list[Spike] = field(default_factory=list)
    offline: list[OfflineWindow] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # refreshed by the device on snapshot

    def to_json(self, now: float) -> dict[str, Any]:
        """The device's entry in the truth file; windows still open are clipped at ``now``."""
        return {
            "stream": self.stream,
            "first_seq": self.acked.first,
            "last_seq": self.acked.last,
            "count": self.acked.count,
            "acked_ranges": self.acked.ranges(),
            "pending": len(self.pending),
            "pending_ranges": to_ranges(self.pending),
            "dropped_ranges": self.dropped.ranges(),
            "taken": self.taken,
            "messages": self.messages,
            "publish_errors": self.publish_errors,
            "connects": self.connects,
            "dropouts": len(self.offline),
            "spikes": [_spike_json(s, now) for s in self.spikes],
            "offline_windows": [
                {"start": w.start, "end": w.end, "buffered": w.buffered} for w in self.offline
            ],
        }


def to_ranges(seqs: list[int]) -> list[list[int]]:
    """``[0, 1, 2, 5]`` -> ``[[0, 2], [5, 5]]`` (input in any order)."""
    out: list[list[int]] = []
    for seq in sorted(seqs):
        if out and out[-1][1] + 1 >= seq:
            out[-1][1] = max(out[-1][1], seq)
        else:
            out.append([seq, seq])
    return out


def _spike_json(spike: Spike, now: float) -> dict[str, Any]:
    return {
        "kind": spike.kind,
        "metric": spike.key,
        "value": spike.level,
        "start": spike.start,
        "end": min(spike.end, now),
        "planned_end": spike.end,
    }


@dataclass(slots=True)
class Truth:
    """The whole run: options, timings and one :class:`DeviceTruth` per device."""

    started_at: float
    options: dict[str, Any]
    devices: dict[str, DeviceTruth] = field(default_factory=dict)
    connect_s: float | None = None
    updated_at: float = 0.0
    final: bool = False

    def to_json(self) -> dict[str, Any]:
        devices = {name: dev.to_json(self.updated_at) for name, dev in self.devices.items()}
        return {
            "version": TRUTH_VERSION,
            "generator": "edgefleet simulate",
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "final": self.final,
            "connect_s": self.connect_s,
            "options": self.options,
            "totals": _totals(devices),
            "devices": devices,
        }


def _totals(devices: dict[str, dict[str, Any]]) -> dict[str, int]:
    keys = ("count", "taken", "messages", "publish_errors", "dropouts", "connects")
    totals = {key: sum(int(d[key]) for d in devices.values()) for key in keys}
    totals["devices"] = len(devices)
    totals["pending"] = sum(int(d["pending"]) for d in devices.values())
    totals["spikes"] = sum(len(d["spikes"]) for d in devices.values())
    return totals


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as JSON to ``path`` so that a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
