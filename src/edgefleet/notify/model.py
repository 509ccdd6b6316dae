"""The notify package's contracts: the :class:`Alert` value, the :class:`Notifier` protocol and
the errors a notifier raises.

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
REPEAT_SEP = "#repeat-"
"""Separator between an alert's event id and its reminder number (``abc#repeat-2``)."""


@dataclass(frozen=True)
class Alert:
    """One alert transition as the rule engine emitted it (mirrors ``AlertEvent``)."""

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
