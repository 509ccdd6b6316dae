"""The backend's Slack parts built from its settings: the notifier and the Socket Mode
client of the buttons (``runtime.Backend`` uses them; re-exported there)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.backend.settings import BackendSettings
from edgefleet.notify import Notifier

if TYPE_CHECKING:
    from edgefleet.notify.socket_mode import AlertActions, SlackActions


def _slack_kind(s: BackendSettings) -> str:
    if s.slack_webhook_url:
        return "webhook"
    return "bot" if s.slack_bot_token else "log only"


def build_slack_actions(s: BackendSettings, ops: AlertActions) -> SlackActions | None:
    """The Socket Mode client for the buttons, or None without an app token."""
    if s.slack_app_token is None or s.slack_bot_token is None:
        return None
    from edgefleet.notify.socket_mode import SlackActions

    return SlackActions(app_token=s.slack_app_token.get_secret_value(),
                        bot_token=s.slack_bot_token.get_secret_value(), actions=ops,
                        api_url=s.slack_api_url)


async def _start_actions(actions: SlackActions | None) -> None:
    """Start connecting Socket Mode in the background; the rest never waits for Slack."""
    if actions is not None:
        await actions.start()


def build_notifier(s: BackendSettings) -> Notifier | None:
    """The Slack notifier the settings ask for (None: alerts go to the log)."""
    if not (s.slack_webhook_url or s.slack_bot_token):
        return None
    from edgefleet.notify.slack import SlackNotifier

    return SlackNotifier(
        webhook_url=s.slack_webhook_url.get_secret_value() if s.slack_webhook_url else None,
        token=s.slack_bot_token.get_secret_value() if s.slack_bot_token else None,
        channel=s.slack_channel,
        api_url=s.slack_api_url,
    )
