"""Alert notifications: a durable outbox, Block Kit formatting and Slack delivery.

    model       Alert, the Notifier protocol, NotifyError > RetryLaterError / DeliveryRefusedError
    format      format_group(alerts) -> (fallback text, blocks); standard library only
    outbox      Outbox: the outbox table in the fleet database, exactly once per event id
    slack       SlackNotifier: slack_sdk async webhook or bot-token client (needs aiohttp)
    budget      NotifyBudget, BudgetSettings: per-device and per-rule limits per window
    delivery    Delivery: one round of grouping, budgeting, sending and retrying
    dispatcher  AlertDispatcher: the asyncio loop running the rounds
    routing     RouteTree, RoutedDispatcher: receivers chosen by labels, one outbox table each
    webhook     JsonWebhookNotifier: a generic JSON webhook receiver (needs aiohttp)
    socket_mode SlackActions: Acknowledge / Snooze / Silence buttons over Socket Mode (slack_sdk)

``SlackNotifier`` is imported lazily so that ``format`` and ``model`` stay usable where
aiohttp is not installed (an AWS Lambda).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgefleet.notify.budget import BudgetSettings, NotifyBudget
from edgefleet.notify.delivery import DispatcherStats
from edgefleet.notify.dispatcher import AlertDispatcher
from edgefleet.notify.format import format_group
from edgefleet.notify.model import (
    Alert,
    DeliveryRefusedError,
    Notifier,
    NotifyError,
    RetryLaterError,
)
from edgefleet.notify.outbox import Outbox, OutboxEntry

if TYPE_CHECKING:
    from edgefleet.notify.slack import SlackNotifier

__all__ = [
    "Alert",
    "AlertDispatcher",
    "BudgetSettings",
    "DeliveryRefusedError",
    "DispatcherStats",
    "Notifier",
    "NotifyBudget",
    "NotifyError",
    "Outbox",
    "OutboxEntry",
    "RetryLaterError",
    "SlackNotifier",
    "format_group",
]


def __getattr__(name: str) -> Any:
    if name == "SlackNotifier":
        from edgefleet.notify.slack import SlackNotifier

        return SlackNotifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
