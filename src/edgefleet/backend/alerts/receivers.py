"""Builds the alert dispatcher from the rules file's ``routes:`` (issue 18).

Without a ``routes:`` section this is the plain :class:`AlertDispatcher` of before. With one,
a :class:`~edgefleet.notify.routing.RoutedDispatcher`: the default receiver (the backend's
Slack settings) plus one dispatcher per receiver, each with its own outbox table
``outbox_<name>`` in the fleet database, its own grouping window and repeat interval
(falling back to the backend's), a Slack channel through the bot token or a JSON webhook.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgefleet.backend.alerts.ruleset import RuleSet
from edgefleet.errors import ConfigError
from edgefleet.notify import AlertDispatcher, Notifier, Outbox
from edgefleet.notify.model import Alert
from edgefleet.notify.outbox_db import SqlDb
from edgefleet.notify.routing import Receiver, RoutedDispatcher


def table_name(receiver: str) -> str:
    """``outbox_<receiver>`` with anything but ``[a-z0-9_]`` turned into ``_``."""
    return "outbox_" + re.sub(r"[^a-z0-9_]", "_", receiver.lower())[:40]


def build_dispatcher(
    rules: RuleSet, open_db: Callable[[], SqlDb | Path], *, bot_token: str | None, api_url: str,
    on_sent: Callable[[Sequence[Alert]], None] | None,
    device_labels: Callable[[str], Mapping[str, str]] = lambda _: {},
    **common: Any,
) -> AlertDispatcher:
    """The dispatcher for ``rules``; ``common`` are the AlertDispatcher arguments of the
    default receiver (notifier, outbox, group_window_s, repeat_interval_s, budget, buttons)."""
    tree = rules.routes
    if tree is None or not tree.receivers:
        return AlertDispatcher(on_sent=on_sent, **common)
    receivers = {name: _dispatcher(r, open_db, bot_token, api_url, on_sent, common)
                 for name, r in tree.receivers.items()}
    groups = _groups_of(rules)
    return RoutedDispatcher(tree=tree, receivers=receivers, groups=groups,
                            device_labels=device_labels, on_sent=on_sent, **common)


def _dispatcher(  # noqa: PLR0917 - one receiver's parts
    receiver: Receiver, open_db: Callable[[], SqlDb | Path], bot_token: str | None, api_url: str,
    on_sent: Callable[[Sequence[Alert]], None] | None, common: dict[str, Any],
) -> AlertDispatcher:
    notifier: Notifier
    if receiver.webhook:
        from edgefleet.notify.webhook import JsonWebhookNotifier

        notifier = JsonWebhookNotifier(receiver.webhook)
    else:
        if not bot_token:
            raise ConfigError(f"receiver {receiver.name!r} posts to a Slack channel: "
                              "set EDGE_BACKEND_SLACK_BOT_TOKEN")
        from edgefleet.notify.slack import SlackNotifier

        notifier = SlackNotifier(token=bot_token, channel=receiver.slack_channel,
                                 api_url=api_url)
    own = {k: v for k, v in common.items() if k != "notifier"}
    own["outbox"] = Outbox(open_db(), table=table_name(receiver.name))
    if receiver.group_window_s is not None:
        own["group_window_s"] = receiver.group_window_s
    if receiver.repeat_s is not None:
        own["repeat_interval_s"] = receiver.repeat_s
    own["buttons"] = common.get("buttons", False) and not receiver.webhook
    return AlertDispatcher(notifier=notifier, on_sent=on_sent, **own)


def _groups_of(rules: RuleSet) -> Callable[[str], tuple[str, ...]]:
    """Device -> the names of the rules file's groups it belongs to (cached)."""
    groups = dict(rules.groups)

    @lru_cache(maxsize=65536)
    def groups_of(device: str) -> tuple[str, ...]:
        return tuple(name for name, globs in groups.items()
                     if any(fnmatchcase(device, g) for g in globs))

    return groups_of
