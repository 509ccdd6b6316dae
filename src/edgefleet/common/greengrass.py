"""Greengrass component configuration: recipe keys -> settings, and deployment-time checks.

The recipes (``components/*/recipe.yaml``) pass each ``DefaultConfiguration`` key to the
process as ``EDGE_AGENT_<FIELD>`` / ``EDGE_BACKEND_<FIELD>`` through ``Setenv``; the maps below
are that correspondence, and ``tests/greengrass`` check the recipes against them. An empty
value means "the built-in default" (the recipe's Run step unsets empty variables).

When a deployment proposes a new configuration, the nucleus asks the running component
(IPC ``SubscribeToValidateConfigurationUpdates``); :func:`watch_configuration` answers
ACCEPTED, or REJECTED with a one-line reason, after validating the proposal against the
settings model exactly as the process would see it (strings, as the nucleus renders them).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Final, Protocol

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from edgefleet.common.logs import kv

log = logging.getLogger(__name__)

ACCESS_CONTROL_KEY: Final = "accessControl"
LOG_LEVEL_KEY: Final = "logLevel"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
_HIDDEN_WORDS = ("token", "secret", "password", "webhook")

AGENT_KEYS: Final[Mapping[str, str]] = {
    "transport": "transport",
    "endpoint": "endpoint",
    "port": "port",
    "certFile": "cert_file",
    "keyFile": "key_file",
    "caFile": "ca_file",
    "intervalS": "interval_s",
    "collectors": "collectors",
    "disabledCollectors": "disabled_collectors",
    "queue": "queue",
    "queueMaxBytes": "queue_max_bytes",
    "queueMaxSamples": "queue_max_samples",
    "awsLimits": "aws_limits",
    "maxPublishesPerS": "max_publishes_per_s",
    "maxBytesPerS": "max_bytes_per_s",
    "batchMaxBytes": "batch_max_bytes",
    "maxInflight": "max_inflight",
    "systemdUnits": "systemd_units",
    "systemdIntervalS": "systemd_interval_s",
    "processes": "processes",
    "textfileDir": "textfile_dir",
    "execCommand": "exec_command",
    "execTimeoutS": "exec_timeout_s",
    "execIntervalS": "exec_interval_s",
    "customMaxKeys": "custom_max_keys",
    "delivery": "delivery",
    "resendAfterS": "resend_after_s",
    "maxUncommitted": "max_uncommitted",
    "giveUpAfter": "give_up_after",
}
"""Recipe configuration key -> ``AgentSettings`` field (environment ``EDGE_AGENT_<FIELD>``)."""

BACKEND_KEYS: Final[Mapping[str, str]] = {
    "transport": "transport",
    "clientId": "client_id",
    "endpoint": "endpoint",
    "port": "port",
    "certFile": "cert_file",
    "keyFile": "key_file",
    "caFile": "ca_file",
    "awsLimits": "aws_limits",
    "rulesFile": "rules_file",
    "httpHost": "http_host",
    "httpPort": "http_port",
    "authToken": "auth_token",
    "slackWebhookUrl": "slack_webhook_url",
    "slackBotToken": "slack_bot_token",
    "slackChannel": "slack_channel",
}
"""Recipe configuration key -> ``BackendSettings`` field (``EDGE_BACKEND_<FIELD>``)."""


def rendered(value: Any) -> str:
    """A configuration value as the nucleus interpolates it into ``Setenv`` (JSON ``asText``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@cache
def _proposal_model(model: type[BaseSettings]) -> type[BaseSettings]:
    """``model`` reading only its arguments: the running process's environment must not mix
    into the validation of a proposed configuration."""

    def init_only(cls: type[BaseSettings], /, settings_cls: Any, **sources: Any) -> Any:
        return (sources["init_settings"],)

    def body(ns: dict[str, Any]) -> None:
        ns["settings_customise_sources"] = classmethod(init_only)

    made: type[BaseSettings] = types.new_class(f"Proposed{model.__name__}", (model,), {}, body)
    return made


def _hidden(key: str) -> bool:
    return any(word in key.lower() for word in _HIDDEN_WORDS)


def _value_problem(key: str, value: Any) -> str | None:
    if key == LOG_LEVEL_KEY:
        if str(value).upper() not in LOG_LEVELS:
            return f"{key}: must be one of {', '.join(LOG_LEVELS)} (got {value!r})"
        return None
    if value is None:
        return f"{key}: must not be null (use \"\" for the built-in default)"
    if isinstance(value, dict | list):
        return f"{key}: must be a string, number or boolean (lists are comma-separated strings)"
    return None


def _reason(exc: ValidationError, keys: Mapping[str, str]) -> str:
    errors = exc.errors()
    err = errors[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    key = next((k for k, f in keys.items() if f == field), field)
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    shown = f" (got {got!r})" if field and isinstance(got, str) and not _hidden(key) else ""
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{key}: {msg}{shown}{more}" if field else f"{msg}{more}"


def check_configuration(
    config: Mapping[str, Any], model: type[BaseSettings], keys: Mapping[str, str]
) -> str | None:
    """Return None when ``config`` (recipe keys) makes valid settings, else a one-line reason."""
    values: dict[str, str] = {}
    for key, value in config.items():
        if key == ACCESS_CONTROL_KEY:
            continue
        if key != LOG_LEVEL_KEY and key not in keys:
            known = ", ".join(sorted([*keys, LOG_LEVEL_KEY]))
            return f"unknown configuration key {key!r}; known: {known}"
        problem = _value_problem(key, value)
        if problem is not None:
            return problem
        if key in keys and rendered(value) != "":
            values[keys[key]] = rendered(value)
    try:
        _proposal_model(model).model_validate(values)
    except ValidationError as exc:
        return _reason(exc, keys)
    return None


class ConfigClient(Protocol):
    """The part of ``GreengrassCoreIPCClientV2`` that configuration validation uses."""

    def subscribe_to_validate_configuration_updates(
        self,
        *,
        on_stream_event: Callable[[Any], None],
        on_stream_error: Callable[[Exception], bool],
        on_stream_closed: Callable[[], None],
    ) -> tuple[Any, Any]:
        """Subscribe (blocking); return (response, stream operation)."""
        ...

    def send_configuration_validity_report_async(
        self, *, configuration_validity_report: Any
    ) -> Any:
        """Send ACCEPTED/REJECTED for a deployment; return a concurrent future."""
        ...


Check = Callable[[Mapping[str, Any]], str | None]


def _checked(check: Check, configuration: Mapping[str, Any]) -> str | None:
    """``check``'s verdict; a check that fails itself rejects (the nucleus would otherwise wait
    for an answer until its timeout and fail the deployment without saying why)."""
    try:
        return check(configuration)
    except Exception as exc:  # any failure of the check must become an answer
        log.exception("the configuration check failed", extra=kv(error=str(exc)))
        first = (str(exc).splitlines() or [""])[0][:200]
        return f"the component could not check this configuration ({type(exc).__name__}: {first})"


def answer(client: ConfigClient, check: Check, event: Any) -> None:
    """Validate the proposal in one ``ValidateConfigurationUpdateEvents`` and report back."""
    from awsiot.greengrasscoreipc.model import (
        ConfigurationValidityReport,
        ConfigurationValidityStatus,
    )

    update = getattr(event, "validate_configuration_update_event", None)
    if update is None:
        return
    reason = _checked(check, update.configuration or {})
    ok = reason is None
    status = ConfigurationValidityStatus.ACCEPTED if ok else ConfigurationValidityStatus.REJECTED
    report = ConfigurationValidityReport(
        status=status, deployment_id=update.deployment_id, message=reason or "accepted"
    )
    log.log(
        logging.INFO if ok else logging.WARNING,
        "configuration update accepted" if ok else "configuration update REJECTED",
        extra=kv(deployment_id=update.deployment_id, reason=reason),
    )
    future = client.send_configuration_validity_report_async(configuration_validity_report=report)
    future.add_done_callback(_log_report_failure)


def _log_report_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("could not send the configuration validity report", extra=kv(error=str(exc)))


def watch_configuration(client: ConfigClient, check: Check) -> Any:
    """Subscribe to configuration validation (blocking: run it in a thread); return the stream.

    Each proposed configuration is answered on the IPC event thread with
    ``send_configuration_validity_report`` (its async variant: the thread never waits).
    """

    def on_event(event: Any) -> None:
        answer(client, check, event)

    def on_error(error: Exception) -> bool:
        log.error("configuration validation stream error", extra=kv(error=str(error)))
        return False

    def on_closed() -> None:
        log.warning("configuration validation stream closed")

    _, stream = client.subscribe_to_validate_configuration_updates(
        on_stream_event=on_event, on_stream_error=on_error, on_stream_closed=on_closed
    )
    log.info("validating configuration updates from deployments")
    return stream
