"""The backend's own figures as Prometheus text (``GET /metrics``); per-device metrics are
in :mod:`edgefleet.backend.web.exposition`."""

from __future__ import annotations

import time
from collections.abc import Mapping

from edgefleet.backend.web.parts import FleetParts
from edgefleet.backend.web.shapes import prometheus

Family = tuple[str, str, str, list[tuple[dict[str, str], float]]]
"""One Prometheus metric family: name, type, help, labelled values."""


def metrics_text(b: FleetParts) -> str:
    """The backend's own figures as Prometheus text (``/metrics``)."""
    c = b.ingest.counters()
    s = b.fleet.summary(time.time())
    d = b.dispatcher.stats()
    rejected = [({"reason": r}, float(n)) for r, n in sorted(c.rejected_total.items())]
    if b.inbox.dropped:
        rejected.append(({"reason": "inbox_full"}, float(b.inbox.dropped)))
    return prometheus([
        ("edgefleet_ingest_messages_total", "counter", "MQTT messages handled",
         [({}, c.messages_total)]),
        ("edgefleet_ingest_samples_total", "counter", "new samples accepted",
         [({}, c.samples_total)]),
        ("edgefleet_ingest_samples_per_second", "gauge", "samples/s over 10 s",
         [({}, s.samples_per_s)]),
        ("edgefleet_ingest_duplicates_total", "counter", "duplicate samples removed",
         [({}, c.duplicates_total)]),
        ("edgefleet_ingest_rejected_total", "counter", "messages rejected, by reason",
         rejected or [({"reason": "none"}, 0.0)]),
        ("edgefleet_ingest_refused_keys_total", "counter",
         "metric keys refused from accepted samples, by reason",
         _labelled("reason", c.refused_keys_total)),
        ("edgefleet_ingest_refused_samples_total", "counter", "samples refused, by reason",
         _labelled("reason", c.refused_samples_total)),
        ("edgefleet_ingest_anomalies_total", "counter",
         "odd but accepted input (seq jumps, identity conflicts), by kind",
         _labelled("kind", c.anomalies_total)),
        ("edgefleet_lost_samples", "gauge", "sequence gaps never filled",
         [({}, c.lost_samples)]),
        ("edgefleet_agent_dropped_samples", "gauge", "samples agents dropped (queue full)",
         [({}, c.agent_dropped)]),
        ("edgefleet_stream_resets_total", "counter", "agents whose seq restarted",
         [({}, c.stream_resets_total)]),
        ("edgefleet_devices", "gauge", "devices by state",
         [({"state": "online"}, s.online), ({"state": "offline"}, s.offline)]),
        ("edgefleet_alerts_firing", "gauge", "alerts firing",
         [({}, len(b.alerts.firing))]),
        ("edgefleet_alert_outbox_depth", "gauge", "alerts waiting for Slack",
         [({}, d.outbox_depth)]),
        ("edgefleet_alert_notifications_suppressed_total", "counter",
         "alert events over the notification budget (summarised, not posted)",
         [({}, d.suppressed_alerts)]),
        ("edgefleet_alert_keys_expired_total", "counter",
         "idle alert conditions forgotten (no sample for a while)",
         [({}, b.alerts.expired_total)]),
        ("edgefleet_slack_messages_total", "counter", "Slack messages sent",
         [({}, d.sent_messages)]),
        ("edgefleet_websocket_clients", "gauge", "dashboard WebSocket clients",
         [({}, len(b.hub.clients))]),
        ("edgefleet_websocket_slow_disconnects_total", "counter", "clients too slow",
         [({}, b.hub.slow_disconnects)]),
        ("edgefleet_websocket_frames_total", "counter", "update frames broadcast",
         [({}, b.hub.frames_sent)]),
        *_service_metrics(b),
    ])

def _service_metrics(b: FleetParts) -> list[Family]:
    return [
        ("edgefleet_feed_up", "gauge", "1 while the backend hears its fleet, 0 when lost",
         [({}, 1.0 if b.feed.ok else 0.0)]),
        ("edgefleet_quarantined_messages_total", "counter",
         "messages the store could not take, set aside", [({}, float(b.quarantine.total))]),
        ("edgefleet_store_failures_total", "counter", "failed attempts to store a batch",
         [({}, float(b.writer.failures_total))]),
        ("edgefleet_store_failing", "gauge", "1 while storing fails",
         [({}, 0.0 if b.writer.failing is None else 1.0)]),
        ("edgefleet_inbox_messages", "gauge", "received messages waiting to be stored",
         [({}, float(len(b.inbox)))]),
        ("edgefleet_inbox_full_waits_total", "counter",
         "times the broker link waited for room in the inbox", [({}, float(b.inbox.waits))]),
        *_delivery_metrics(b),
    ]

def _delivery_metrics(b: FleetParts) -> list[Family]:
    out = list[Family]()
    if b.acker is not None:
        out += [
            ("edgefleet_watermarks_published_total", "counter",
             "commit watermarks sent to devices", [({}, float(b.acker.published_total))]),
            ("edgefleet_watermarks_failed_total", "counter",
             "watermark publishes that failed (retried)", [({}, float(b.acker.failed_total))]),
            ("edgefleet_watermarks_pending", "gauge", "watermarks waiting to be published",
             [({}, float(b.acker.pending))]),
        ]
    if (role := b.cluster()) is not None:
        out += [(f"edgefleet_alert_{name}", kind, text, [({}, _number(role[key]))])
                for name, key, kind, text in _CLUSTER]
    if b.received:
        out.append(("edgefleet_connection_messages_total", "counter",
                    "messages received per broker connection (shared subscription)",
                    [({"connection": str(k)}, float(n))
                     for k, n in enumerate(b.received, b.connection_first)]))
    return out


def _number(value: object) -> float:
    return float(value) if isinstance(value, (bool, int, float)) else 0.0


_CLUSTER = (  # several backends on PostgreSQL (backend/cluster.py)
    ("leader", "leading", "gauge", "1 while this backend is the alert leader"),
    ("leader_takeovers_total", "takeovers", "counter", "times this backend took the lead"),
    ("evaluated_samples_total", "evaluated", "counter",
     "stored samples this backend evaluated as the alert leader"),
)


def _labelled(label: str, counts: Mapping[str, int]) -> list[tuple[dict[str, str], float]]:
    return [({label: name}, float(n)) for name, n in sorted(counts.items())]
