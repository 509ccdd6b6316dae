"""One simulated device as a pure state machine: no clock, no network, no tasks.

The runner drives it: :meth:`SimDevice.advance` at every tick (spikes and dropouts start and
end there), :meth:`SimDevice.take_sample` to queue a reading, then :meth:`next_batch` /
:meth:`acked` / :meth:`failed` around each publish. Like the real agent, a sample gets its
``seq`` when it is queued, leaves the queue only on a PUBACK, and a failed publish puts it
back at the front, so seqs stay contiguous and nothing is lost; batches are built with the
agent's own :func:`edgefleet.agent.batch.fit`.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque

from edgefleet.agent.batch import fit, sample_body
from edgefleet.agent.contracts import QueuedSample
from edgefleet.sim.model import MetricModel, Spike, make_profile, make_spike
from edgefleet.sim.options import ScriptedEvent, SimOptions
from edgefleet.sim.truth import DeviceTruth, OfflineWindow
from edgefleet.wire.messages import AgentHealth

AGENT_VERSION = "sim"
_RSS_BASE = 27 * 1024 * 1024


class Transition(enum.Enum):
    """What the runner must do with the connection after :meth:`SimDevice.advance`."""

    NONE = "none"
    DROP = "drop"  # disconnect abruptly: the broker publishes the Last Will
    RETURN = "return"  # connect again


def _chance(rate_per_h: float, dt: float) -> float:
    """Probability that a Poisson event of ``rate_per_h`` happens within ``dt`` seconds."""
    return 1.0 - math.exp(-rate_per_h * max(0.0, dt) / 3600.0)


class SimDevice:
    """State and ground truth of one simulated device."""

    def __init__(
        self, name: str, index: int, opts: SimOptions, *, seed: int, t0: float, stream: str
    ) -> None:
        self.name = name
        self.opts = opts
        self.t0 = t0
        self.truth = DeviceTruth(device=name, stream=stream)
        values = random.Random(f"{seed}:{name}:values")
        self._events = random.Random(f"{seed}:{name}:events")
        self.model = MetricModel(make_profile(values, t0), values, t0)
        mine = [e for e in opts.events() if e.device == index]
        self._script = sorted(mine, key=lambda e: e.at_s)
        self._last_tick = t0
        self.next_seq = 0
        self.queue: deque[QueuedSample] = deque()
        self.inflight: list[QueuedSample] = []
        self.queue_bytes = 0
        self.dropped_total = 0
        self.spike: Spike | None = None
        self.dropout: OfflineWindow | None = None
        self._dropout_until = 0.0

    @property
    def stream(self) -> str:
        return self.truth.stream

    @property
    def online(self) -> bool:
        """False while a dropout lasts (the runner keeps no connection then)."""
        return self.dropout is None

    # --- time -----------------------------------------------------------------------------
    def advance(self, now: float) -> Transition:
        """Start or end spikes and dropouts due at ``now``."""
        dt, self._last_tick = now - self._last_tick, now
        self._update_spike(now, dt)
        if self.dropout is not None:
            if now < self._dropout_until:
                return Transition.NONE
            self.dropout.end = now
            if not self.dropout.buffered:
                self.model.reboot(now)
            self.dropout = None
            return Transition.RETURN
        return Transition.DROP if self._maybe_drop(now, dt) else Transition.NONE

    def _due(self, kind: str, now: float) -> ScriptedEvent | None:
        for event in self._script:
            if event.kind == kind and self.t0 + event.at_s <= now:
                self._script.remove(event)
                return event
        return None

    def _update_spike(self, now: float, dt: float) -> None:
        if self.spike is not None and now >= self.spike.end:
            self.spike = None
        if self.spike is not None:
            return
        event = self._due("spike", now)
        if event is not None:
            self.spike = make_spike(event.spike_kind, now, event.duration_s)
        elif self.opts.spike_kinds and self._events.random() < _chance(self.opts.spike_rate, dt):
            kind = self._events.choice(self.opts.spike_kinds)
            self.spike = make_spike(kind, now, self.opts.spike_duration_s)
        if self.spike is not None:
            self.truth.spikes.append(self.spike)

    def _maybe_drop(self, now: float, dt: float) -> bool:
        event = self._due("dropout", now)
        if event is not None:
            duration, buffered = event.duration_s, event.buffered
        elif self._events.random() < _chance(self.opts.dropout_rate, dt):
            duration = self.opts.dropout_duration_s * self._events.uniform(0.5, 1.5)
            buffered = self._events.random() < self.opts.backlog_share
        else:
            return False
        self.dropout = OfflineWindow(start=now, end=None, buffered=buffered)
        self._dropout_until = now + duration
        self.truth.offline.append(self.dropout)
        return True

    # --- samples --------------------------------------------------------------------------
    def take_sample(self, now: float) -> QueuedSample | None:
        """Take and queue one reading; ``None`` while the device is powered off."""
        if self.dropout is not None and not self.dropout.buffered:
            return None
        metrics = self.model.sample(now, self.spike)
        sample = QueuedSample(seq=self.next_seq, ts=now, body=sample_body(metrics, ()))
        self.next_seq += 1
        self.queue.append(sample)
        self.queue_bytes += len(sample.body)
        self.truth.taken += 1
        while len(self.queue) > self.opts.backlog_max:
            self._drop_oldest()
        return sample

    def _drop_oldest(self) -> None:
        old = self.queue.popleft()
        self.queue_bytes -= len(old.body)
        self.dropped_total += 1
        self.truth.dropped.add(old.seq)

    # --- publishing -----------------------------------------------------------------------
    def next_batch(self) -> list[QueuedSample]:
        """The oldest queued samples that fit one message; empty while one is in flight."""
        if self.inflight or not self.queue:
            return []
        batch = fit(self.queue, self.opts.batch_max_bytes)
        for _ in batch:
            self.queue.popleft()
        self.inflight = batch
        return batch

    def acked(self, batch: list[QueuedSample]) -> None:
        """The broker acknowledged the message carrying ``batch``."""
        for sample in batch:
            self.truth.acked.add(sample.seq)
            self.queue_bytes -= len(sample.body)
        self.truth.messages += 1
        self.inflight = []

    def failed(self, batch: list[QueuedSample]) -> None:
        """The outcome is unknown or refused: back to the front, sent again later."""
        self.queue.extendleft(reversed(batch))
        self.inflight = []
        self.truth.publish_errors += 1

    def health(self, now: float) -> AgentHealth:
        """What the agent would report about itself (queue figures are real, RSS made up)."""
        waiting = self.inflight[0] if self.inflight else (self.queue[0] if self.queue else None)
        return AgentHealth(
            queue_depth=len(self.queue) + len(self.inflight),
            queue_bytes=self.queue_bytes,
            oldest_age_s=round(max(0.0, now - waiting.ts), 3) if waiting else 0.0,
            dropped_total=self.dropped_total,
            publish_errors_total=self.truth.publish_errors,
            rss_bytes=_RSS_BASE + 64 * min(self.next_seq, 50_000),
            agent_version=AGENT_VERSION,
        )

    def snapshot(self) -> DeviceTruth:
        """The ground truth with the list of pending (taken, not yet acked) seqs refreshed."""
        self.truth.pending = [s.seq for s in self.inflight] + [s.seq for s in self.queue]
        return self.truth
