"""The notify package's contracts: the :class:`Alert` value, the :class:`Notifier` protocol and
the errors a notifier raises.

:class:`Alert` is THE alert of edgefleet: the rule engine emits it, the alert centre keeps
the firing ones and the recent ones, the outbox stores it, Slack and the Lambda format it.
The severity order (:data:`SEVERITIES`, :func:`severity_rank`) is defined here and only here.

    NotifyError          a message could not be delivered (``reason`` is a counter label)
    +-- RetryLaterError       transient: connection error, timeout, 5xx, 429; keep it and retry
    +-- DeliveryRefusedError  permanent: bad token, unknown channel, other 4xx; retrying cannot help

This module imports nothing but the standard library, so an AWS Lambda can use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol, cast

from edgefleet.errors import EdgefleetError

Kind = Literal["firing", "resolved"]
Severity = Literal["info", "warning", "critical"]

KINDS: tuple[Kind, ...] = ("firing", "resolved")
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
"""Every severity, least severe first."""
SEVERITY_RANK: dict[str, int] = {name: len(SEVERITIES) - 1 - i for i, name in enumerate(SEVERITIES)}
"""Worst first: ``critical`` 0, ``warning`` 1, ``info`` 2."""
REPEAT_SEP = "#repeat-"
"""Separator between an alert's event id and its reminder number (``abc#repeat-2``)."""


def severity_rank(severity: str) -> int:
    """Sort key, worst first: ``critical`` 0, ``warning`` 1, ``info`` 2, anything else 3."""
    return SEVERITY_RANK.get(severity, len(SEVERITIES))


def alert_key(rule: str, device: str, instance: str | None) -> str:
    """Stable id of one alert: ``rule|device|instance`` (instance empty when None)."""
    return f"{rule}|{device}|{instance or ''}"


def event_id(key: str, kind: str, started_at: float) -> str:
    """The deterministic id of one transition: ``<key>|<kind>|<started_at, 3 decimals>``."""
    return f"{key}|{kind}|{started_at:.3f}"


@dataclass(frozen=True)
class Alert:
    """One alert transition (``firing`` or ``resolved``) of ``rule`` on ``device``.

    ``started_at`` is when the condition began to hold, ``at`` the time of the sample (or
    offline report) that caused the transition; ``key`` is :func:`alert_key`, ``event_id``
    :func:`event_id` (``#repeat-<n>`` appended for the n-th reminder). Build new ones with
    :meth:`new`, which fills in both.
    """

    kind: Kind
    rule: str
    device: str
    instance: str | None
    severity: Severity
    value: float
    threshold: float
    labels: dict[str, str]
    summary: str
    started_at: float
    at: float
    key: str
    event_id: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"alert kind must be one of {KINDS}, got {self.kind!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"alert severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not self.event_id:
            raise ValueError(f"alert {self.rule!r} on {self.device!r} has no event_id")

    @classmethod
    def new(
        cls, *, kind: str, rule: str, device: str, instance: str | None, severity: str,
        value: float, threshold: float, labels: Mapping[str, str], summary: str,
        started_at: float, at: float,
    ) -> Alert:
        """A new transition, with its ``key`` and ``event_id`` derived from the fields."""
        key = alert_key(rule, device, instance)
        return cls(kind=cast(Kind, kind), rule=rule, device=device, instance=instance,
                   severity=cast(Severity, severity), value=value, threshold=threshold,
                   labels=dict(labels), summary=summary, started_at=started_at, at=at,
                   key=key, event_id=event_id(key, kind, started_at))

    @property
    def group_key(self) -> str:
        """Alerts with the same key go into one Slack message: ``kind|rule|severity``."""
        return f"{self.kind}|{self.rule}|{self.severity}"

    @property
    def repeat(self) -> int:
        """0 for the first notification, n for the n-th reminder of a still-firing alert."""
        _, sep, number = self.event_id.rpartition(REPEAT_SEP)
        return int(number) if sep and number.isdigit() else 0

    def reminder(self, repeat: int, at: float) -> Alert:
        """A copy that notifies again: event id ``<original>#repeat-<repeat>``, time ``at``."""
        base = self.event_id.split(REPEAT_SEP, 1)[0]
        return replace(self, event_id=f"{base}{REPEAT_SEP}{repeat}", at=at)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (labels become a plain dict)."""
        doc = asdict(self)
        doc["labels"] = dict(self.labels)
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Alert:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on a bad kind or severity."""
        instance = doc.get("instance")
        return cls(
            kind=cast(Kind, str(doc["kind"])),
            rule=str(doc["rule"]),
            device=str(doc["device"]),
            instance=None if instance is None else str(instance),
            severity=cast(Severity, str(doc["severity"])),
            value=float(doc["value"]),
            threshold=float(doc["threshold"]),
            labels={str(k): str(v) for k, v in dict(doc.get("labels") or {}).items()},
            summary=str(doc.get("summary", "")),
            started_at=float(doc.get("started_at", 0.0)),
            at=float(doc.get("at", 0.0)),
            key=str(doc.get("key", "")),
            event_id=str(doc["event_id"]),
        )


class NotifyError(EdgefleetError):
    """A message could not be delivered; ``reason`` is a short stable counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class RetryLaterError(NotifyError):
    """Transient failure; ``retry_after`` is the wait the server asked for, if it said."""

    def __init__(self, reason: str, detail: str = "", retry_after: float | None = None) -> None:
        super().__init__(reason, detail)
        self.retry_after = retry_after


class DeliveryRefusedError(NotifyError):
    """Permanent failure: the same request will fail again until the setup is fixed."""


class Notifier(Protocol):
    """Delivers one formatted message to a chat service."""

    async def send(
        self, *, text: str, blocks: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]
    ) -> None:
        """Deliver one message; raise :class:`RetryLaterError` or :class:`DeliveryRefusedError`."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
