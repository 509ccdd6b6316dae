"""Ingest: turn received MQTT messages into new samples, status reports and counters.

:meth:`Ingest.handle` decodes one message with :func:`edgefleet.wire.messages.decode`,
counts what it rejects, drops duplicates by ``(device, stream, seq)`` (see
:mod:`edgefleet.backend.ingest.dedup` for the exact rules and the loss figure) and returns
what is new. It never raises for anything a client can send, and costs a dict lookup, a
few integer operations and one set test of the sample's keys per sample on top of decoding.

Crash safety: the dedup state must be saved together with the samples it admitted, so a
restart neither drops a sample the store lacks nor stores a replay twice. Every time the
accepted samples go to the store, take the changed cursors at the same moment::

    store.add_samples(pending, cursors=ingest.take_cursors(), devices=fleet.take_dirty())

and on start ``ingest.restore(store.cursors())``.

Bounds (see ``docs/protocol.md``): a device's metric keys are held to :class:`KeyBounds`
(extra keys refused with reason ``cardinality``, the rest of the sample kept), it remembers
at most ``max_streams`` streams, and a seq jump beyond ``max_seq_jump`` starts a new epoch
(counted as the anomaly ``seq_jump``, not as loss). Samples of a retired stream are refused
(``retired_stream``); when they keep coming, the device is flagged with an identity
conflict (:meth:`Ingest.conflict`, :mod:`edgefleet.backend.ingest.identity`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from edgefleet.backend.ingest.dedup import (
    DEFAULT_JUMP,
    DEFAULT_STREAMS,
    DEFAULT_WINDOW,
    SeqCursor,
    SeqTracker,
)
from edgefleet.backend.ingest.identity import IdentityWatch
from edgefleet.backend.ingest.keys import (
    DEFAULT_FORGET_S,
    DEFAULT_MAX_INSTANCES,
    DEFAULT_MAX_KEYS,
    KeyBounds,
    KeyBudget,
)
from edgefleet.backend.records import AcceptedSample, IngestCounters, IngestResult
from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.errors import ProtocolError
from edgefleet.wire.messages import MetricsMessage, StatusMessage, decode

__all__ = ["Ingest", "IngestCounters", "IngestResult"]

REJECT_REASONS = ("malformed", "oversized", "unknown_version", "spoofed", "bad_topic")
REFUSED_KEY_REASONS = ("cardinality",)
REFUSED_SAMPLE_REASONS = ("retired_stream",)
ANOMALY_REASONS = ("seq_jump", "identity_conflict")
_log = logging.getLogger(__name__)


class Ingest:
    """Decodes, counts and de-duplicates messages; call from one thread only."""

    def __init__(
        self, *, window: int = DEFAULT_WINDOW, log_interval_s: float = 10.0,
        max_seq_jump: int = DEFAULT_JUMP, max_streams: int = DEFAULT_STREAMS,
        max_keys: int = DEFAULT_MAX_KEYS, max_instances: int = DEFAULT_MAX_INSTANCES,
        forget_keys_s: float = DEFAULT_FORGET_S, identity: IdentityWatch | None = None,
        take_back_after_s: float = 120.0,
    ) -> None:
        self._window, self._jump, self._max_streams = window, max_seq_jump, max_streams
        self._take_back = take_back_after_s
        # refuse bad bounds now (ValueError), not at the first message
        SeqTracker("", window=window, jump=max_seq_jump, max_streams=max_streams)
        self._bounds = KeyBounds(max_keys, max_instances, forget_keys_s)
        self._identity = identity or IdentityWatch(max_streams=max_streams)
        self._trackers: dict[str, SeqTracker] = {}
        self._keys: dict[str, KeyBudget] = {}
        self._dirty: set[str] = set()
        self._dropped: dict[str, tuple[float, int]] = {}  # device -> (sent_at, dropped_total)
        self._rejected = dict.fromkeys(REJECT_REASONS, 0)
        self._refused_keys = dict.fromkeys(REFUSED_KEY_REASONS, 0)
        self._refused_samples = dict.fromkeys(REFUSED_SAMPLE_REASONS, 0)
        self._anomalies = dict.fromkeys(ANOMALY_REASONS, 0)
        self._messages = self._samples = self._duplicates = self._resets = 0
        self._lost = self._agent_dropped = 0
        self._ratelog = RateLimitedLog(log_interval_s)
        self._notice = RateLimitedLog(max(log_interval_s, 600.0))  # per device

    def handle(self, topic: str, payload: bytes, now: float) -> IngestResult:
        """Process one received message; ``now`` is the backend's clock (Unix seconds)."""
        self._messages += 1
        try:
            msg = decode(topic, payload)
        except ProtocolError as exc:
            return self._reject(exc.reason, exc.detail, topic, now)
        except RecursionError:  # json.loads on absurdly nested arrays
            return self._reject("malformed", "JSON nested too deeply", topic, now)
        if isinstance(msg, StatusMessage):
            return IngestResult("status", msg.device_id, status=msg, sent_at=msg.ts)
        return self._metrics(msg, now)

    def counters(self) -> IngestCounters:
        """A consistent copy of every counter."""
        return IngestCounters(
            messages_total=self._messages,
            samples_total=self._samples,
            duplicates_total=self._duplicates,
            stream_resets_total=self._resets,
            rejected_total=dict(self._rejected),
            refused_keys_total=dict(self._refused_keys),
            refused_samples_total=dict(self._refused_samples),
            anomalies_total=dict(self._anomalies),
            lost_samples=self._lost,
            agent_dropped=self._agent_dropped,
        )

    def lost(self, device: str) -> int:
        """Samples of ``device`` known to be missing (0 for an unknown device)."""
        tracker = self._trackers.get(device)
        return 0 if tracker is None else tracker.lost

    def last_seq(self, device: str) -> int | None:
        """Highest seq received of ``device``'s current stream (cheap; None if unknown)."""
        tracker = self._trackers.get(device)
        return None if tracker is None else tracker.high

    def watermark(self, device: str) -> tuple[str, int] | None:
        """``(stream, through)``: what ``device`` may delete (see
        :meth:`SeqTracker.committed_through`); None when its agent does not wait for it."""
        tracker = self._trackers.get(device)
        if tracker is None:
            return None
        through = tracker.committed_through()
        return None if through is None else (tracker.stream, through)

    def sequence(self, device: str) -> dict[str, object] | None:
        """What arrived of ``device``'s current stream: first/last seq, count, lost."""
        tracker = self._trackers.get(device)
        if tracker is None:
            return None
        c = tracker.cursor()
        return {"stream": c.stream, "first_seq": c.base, "last_seq": c.high,
                "received": c.received, "lost": c.lost}

    def conflict(self, device: str) -> dict[str, Any] | None:
        """``device``'s identity conflict: since, streams, refused_samples, last_refused,
        detail (the likely cause); None when it is not flagged."""
        return self._identity.conflict(device)

    def cursor(self, device: str) -> SeqCursor | None:
        """``device``'s dedup state as it would be saved now (None: unknown device)."""
        tracker = self._trackers.get(device)
        return None if tracker is None else tracker.cursor()

    def take_cursors(self) -> dict[str, SeqCursor]:
        """The dedup state of every device changed since the last call (for the store)."""
        taken = {device: self._trackers[device].cursor() for device in self._dirty}
        self._dirty.clear()
        return taken

    def restore(self, cursors: Mapping[str, SeqCursor]) -> None:
        """Replace the dedup state with saved cursors (e.g. ``FleetStore.cursors()``)."""
        self._trackers = {
            device: SeqTracker.from_cursor(cursor, window=self._window, jump=self._jump,
                                           max_streams=self._max_streams)
            for device, cursor in cursors.items()
        }
        self._dirty.clear()
        self._lost = sum(tracker.lost for tracker in self._trackers.values())

    def absorb(self, cursors: Mapping[str, SeqCursor]) -> None:
        """Adopt committed cursors that also count other backends' seqs (several backends on
        PostgreSQL, ``store/pg_cursors.py``), so the watermark and the loss figure cover what
        anyone stored; what the agent holds and when it was heard stay this backend's."""
        for device, cursor in cursors.items():
            old = self._trackers.get(device)
            if old is None or old.stream != cursor.stream:
                continue
            new = SeqTracker.from_cursor(cursor, window=self._window, jump=self._jump,
                                         max_streams=self._max_streams)
            new.heard, new.held_from, new.jumps = old.heard, old.held_from, old.jumps
            self._lost += new.lost - old.lost
            self._trackers[device] = new

    # -- internals -------------------------------------------------------------------------

    def _metrics(self, msg: MetricsMessage, now: float) -> IngestResult:
        device = msg.device_id
        tracker = self._trackers.get(device)
        reset = False
        if tracker is None:
            tracker = self._trackers[device] = SeqTracker(
                msg.stream, window=self._window, jump=self._jump, max_streams=self._max_streams)
        elif msg.stream != tracker.stream:
            if msg.stream in tracker.retired:
                if not self._takes_back(tracker, now):
                    return self._old_stream(msg, tracker, now)
                self._returned(msg, tracker, 0, now)
            reset = self._reset(tracker, msg, now)
        tracker.heard = now
        if device in self._identity.watching and self._identity.heard(device, now):
            _log.info("identity conflict over", extra=kv(device=device, stream=msg.stream))
        lost_before, jumps_before = tracker.lost, tracker.jumps
        samples = self._admit(device, tracker, msg, now)
        if msg.held_from is not None and tracker.stream == msg.stream:
            held = tracker.held_from
            tracker.held_from = msg.held_from if held is None else max(held, msg.held_from)
        duplicates = len(msg.samples) - len(samples)
        self._samples += len(samples)
        self._duplicates += duplicates
        self._lost += tracker.lost - lost_before
        if tracker.jumps != jumps_before:
            self._jumped(device, tracker.jumps - jumps_before, now)
        if samples or reset:
            self._dirty.add(device)
        if msg.health is not None:
            self._note_dropped(device, msg.sent_at, msg.health.dropped_total)
        return IngestResult(
            "metrics", device, samples, duplicates, health=msg.health, sent_at=msg.sent_at,
            stream_reset=reset,
        )

    def _admit(
        self, device: str, tracker: SeqTracker, msg: MetricsMessage, now: float
    ) -> tuple[AcceptedSample, ...]:
        """The new samples of ``msg``, each with only the keys within the device's bounds."""
        budget = self._keys.get(device)
        if budget is None:
            budget = self._keys[device] = KeyBudget(self._bounds, now)
        budget.tick(now)
        refused_before, accept, admit = budget.refused, tracker.accept, budget.admit
        samples = tuple(
            AcceptedSample(device, s.seq, s.ts, admit(s.metrics))
            for s in msg.samples if accept(s.seq)
        )
        if budget.refused != refused_before:
            self._refused_keys["cardinality"] += budget.refused - refused_before
            self._notify(device, "cardinality", now, "metric keys refused: over the bounds",
                         refused=budget.refused - refused_before, keys=budget.count,
                         max_keys=self._bounds.max_keys,
                         max_instances=self._bounds.max_instances)
        return samples

    def _jumped(self, device: str, jumps: int, now: float) -> None:
        self._anomalies["seq_jump"] += jumps
        self._notify(device, "seq_jump", now, "seq jumped: a new epoch of the stream",
                     jumps=jumps, max_seq_jump=self._jump)

    def _notify(self, device: str, what: str, now: float, text: str, **fields: Any) -> None:
        """A warning about one device, at most once per device and kind every 10 minutes."""
        suppressed = self._notice.allow(f"{what}:{device}", now)
        if suppressed is not None:
            _log.warning(text, extra=kv(device=device, suppressed=suppressed, **fields))

    def _takes_back(self, tracker: SeqTracker, now: float) -> bool:
        """Whether a retired stream becomes current again: the current one went quiet."""
        if not tracker.heard:  # the first message since a restore starts the clock
            tracker.heard = now
        return now - tracker.heard >= self._take_back

    def _reset(self, tracker: SeqTracker, msg: MetricsMessage, now: float) -> bool:
        old = tracker.stream
        taken_back = msg.stream in tracker.retired
        tracker.restart(msg.stream)
        self._resets += 1
        suppressed = self._ratelog.allow("stream_reset", now)
        if suppressed is not None:
            _log.info(
                "device started a new sequence stream",
                extra=kv(device=msg.device_id, old_stream=old, new_stream=msg.stream,
                         first_seq=msg.samples[0].seq, lost_before=tracker.lost_prior,
                         taken_back=taken_back, suppressed=suppressed),
            )
        return True

    def _returned(self, msg: MetricsMessage, tracker: SeqTracker, refused: int, now: float) -> None:
        """A retired stream was heard again: tell the identity watch, warn if it flags."""
        device, top = msg.device_id, max(s.seq for s in msg.samples)
        if self._identity.retired(device, current=tracker.stream, stream=msg.stream,
                                  top_seq=top, samples=refused, now=now):
            self._anomalies["identity_conflict"] += 1
            conflict = self._identity.conflict(device) or {}
            self._notify(device, "identity_conflict", now, "identity conflict",
                         streams=conflict.get("streams"), cause=conflict.get("detail"))

    def _old_stream(self, msg: MetricsMessage, tracker: SeqTracker, now: float) -> IngestResult:
        device, refused = msg.device_id, len(msg.samples)
        self._refused_samples["retired_stream"] += refused
        self._returned(msg, tracker, refused, now)
        suppressed = self._ratelog.allow("retired_stream", now)
        if suppressed is not None:
            _log.info(
                "refused samples of a retired stream",
                extra=kv(device=device, stream=msg.stream, samples=refused,
                         suppressed=suppressed),
            )
        return IngestResult("metrics", device, refused=refused, health=None,
                            sent_at=msg.sent_at)

    def _note_dropped(self, device: str, sent_at: float, dropped: int) -> None:
        last = self._dropped.get(device)
        if last is not None and sent_at < last[0]:
            return  # an older message delivered late: keep the newer report
        self._agent_dropped += dropped - (0 if last is None else last[1])
        self._dropped[device] = (sent_at, dropped)

    def _reject(self, reason: str, detail: str, topic: str, now: float) -> IngestResult:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        suppressed = self._ratelog.allow(f"reject:{reason}", now)
        if suppressed is not None:
            _log.warning(
                "message rejected",
                extra=kv(reason=reason, topic=topic[:160], detail=detail[:300],
                         suppressed=suppressed),
            )
        return IngestResult("rejected", reason=reason)
