"""AWS Lambda handler: alerts from an AWS IoT rule, directly or through SNS, to Slack.

The message is built by the backend's own formatting (:mod:`edgefleet.notify.format`
and ``model``), so Slack shows the same cards in both paths. Only the standard library is
used besides those: no boto3, aiohttp or slack_sdk. Handler: ``edgefleet.aws.lambda_slack.handler``.

Events:

- SNS: ``{"Records": [{"EventSource": "aws:sns", "Sns": {"Message": "<JSON>"}}]}``;
- an IoT rule's Lambda action: the rule's ``SELECT`` result itself.

Each message is one alert object (the fields of ``Alert.to_dict()``; ``instance``, ``labels``,
``summary``, ``started_at``, ``at`` and ``key`` may be left out), a list of them, or
``{"alerts": [...]}``. Alerts are grouped by ``Alert.group_key``, one Slack message a group.

Settings (environment):

- ``EDGEFLEET_SLACK_WEBHOOK_URL``: the incoming-webhook URL, or
- ``EDGEFLEET_SLACK_WEBHOOK_PARAM``: the name of an SSM SecureString holding it, read through
  the AWS Parameters and Secrets Lambda Extension on ``localhost:2773`` (port from
  ``PARAMETERS_SECRETS_EXTENSION_HTTP_PORT``) and cached while the container lives;
- ``EDGEFLEET_SLACK_TIMEOUT_S``: HTTP timeout in seconds (default 10).

They are read once per invocation into :class:`LambdaSettings` (the only place that reads the
environment); :func:`post_alerts` and :func:`webhook_url` take the settings as an argument.

A delivery failure raises (:class:`RetryLaterError` or :class:`DeliveryRefusedError`), so
Lambda retries an asynchronous invocation twice and then sends the event to the function's
dead-letter queue (see infra/edgefleet.yaml). Delivery is at least once: a retry can
repeat groups already posted. An alert that cannot be parsed is logged and skipped
(retrying cannot fix it).
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgefleet.common.logs import kv
from edgefleet.notify.format import format_group
from edgefleet.notify.model import Alert, DeliveryRefusedError, RetryLaterError

log = logging.getLogger(__name__)

WEBHOOK_ENV = "EDGEFLEET_SLACK_WEBHOOK_URL"
PARAM_ENV = "EDGEFLEET_SLACK_WEBHOOK_PARAM"
TIMEOUT_ENV = "EDGEFLEET_SLACK_TIMEOUT_S"
EXTENSION_PORT_ENV = "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT"
_ALERT_DEFAULTS: dict[str, Any] = {"instance": None, "labels": {}, "summary": ""}
_cached_urls: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class LambdaSettings:
    """The Lambda's settings; :meth:`from_env` reads the documented variables."""

    webhook_url: str = ""
    webhook_param: str = ""  # an SSM parameter name, used when ``webhook_url`` is empty
    timeout_s: float = 10.0
    extension_port: int = 2773
    session_token: str = ""  # the Lambda's own, for the Parameters and Secrets extension

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LambdaSettings:
        """Read ``EDGEFLEET_SLACK_*`` and the extension's variables; a bad value raises
        :class:`DeliveryRefusedError` naming the variable (retrying cannot fix it)."""
        return cls(
            webhook_url=env.get(WEBHOOK_ENV, ""),
            webhook_param=env.get(PARAM_ENV, ""),
            timeout_s=_number(env, TIMEOUT_ENV, 10.0),
            extension_port=int(_number(env, EXTENSION_PORT_ENV, 2773)),
            session_token=env.get("AWS_SESSION_TOKEN", ""),
        )


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        detail = f"{name} must be a positive number (got {text!r})"
        raise DeliveryRefusedError("bad_setting", detail)
    return value


def handler(event: Mapping[str, Any], context: object = None) -> dict[str, int]:
    """Lambda entry point: post every alert in ``event``; return counts."""
    alerts, skipped = alerts_from_event(event)
    messages = post_alerts(alerts, LambdaSettings.from_env(os.environ)) if alerts else 0
    log.info("alerts posted", extra=kv(alerts=len(alerts), messages=messages, skipped=skipped))
    return {"alerts": len(alerts), "messages": messages, "skipped": skipped}


def post_alerts(alerts: Sequence[Alert], settings: LambdaSettings) -> int:
    """Post ``alerts``, one Slack message per ``Alert.group_key``; return how many messages."""
    groups: dict[str, list[Alert]] = {}
    for alert in alerts:
        groups.setdefault(alert.group_key, []).append(alert)
    if groups:
        url = webhook_url(settings)
        for batch in groups.values():
            text, blocks = format_group(batch)
            post_json(url, {"text": text, "blocks": blocks}, timeout=settings.timeout_s)
    return len(groups)


def alerts_from_event(event: Mapping[str, Any]) -> tuple[list[Alert], int]:
    """The alerts an SNS or IoT-rule event carries, and how many items were unusable."""
    records = event.get("Records")
    docs: list[Any] = [event]
    if isinstance(records, list):
        docs = [_sns_message(record) for record in records]
    alerts: list[Alert] = []
    skipped = 0
    for item in (item for doc in docs for item in _unpack(doc)):
        try:
            alerts.append(_alert(item))
        except (KeyError, TypeError, ValueError) as exc:
            skipped += 1
            log.error("unusable alert skipped", extra=kv(error=repr(exc), item=str(item)[:500]))
    return alerts, skipped


def _sns_message(record: Mapping[str, Any]) -> Any:
    """The decoded JSON of one SNS record; the raw text when it is not JSON (then skipped)."""
    if record.get("EventSource") != "aws:sns":
        raise DeliveryRefusedError("bad_event", f"not an SNS record: {record.get('EventSource')}")
    message = record["Sns"]["Message"]
    try:
        return json.loads(message)
    except ValueError:
        return str(message)


def _unpack(doc: Any) -> list[Any]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("alerts"), list):
        return list(doc["alerts"])
    return [doc]


def _alert(item: Any) -> Alert:
    if not isinstance(item, dict):
        raise TypeError(f"an alert is a JSON object, got {type(item).__name__}")
    doc = {**_ALERT_DEFAULTS, **item}
    doc.setdefault("at", doc.get("started_at", 0.0))
    doc.setdefault("started_at", doc["at"])
    doc.setdefault("key", f"{doc.get('rule')}|{doc.get('device')}|{doc.get('instance') or ''}")
    return Alert.from_dict(doc)


def webhook_url(settings: LambdaSettings) -> str:
    """The webhook URL of the settings, or from SSM through the Lambda extension."""
    if settings.webhook_url:
        return settings.webhook_url
    name = settings.webhook_param
    if not name:
        raise DeliveryRefusedError("no_webhook", f"set {WEBHOOK_ENV} or {PARAM_ENV}")
    if name not in _cached_urls:
        _cached_urls[name] = _ssm_parameter(name, settings)
    return _cached_urls[name]


def _ssm_parameter(name: str, settings: LambdaSettings) -> str:
    query = urllib.parse.urlencode({"name": name, "withDecryption": "true"})
    request = urllib.request.Request(
        f"http://localhost:{settings.extension_port}/systemsmanager/parameters/get?{query}",
        headers={"X-Aws-Parameters-Secrets-Token": settings.session_token},
    )
    body = _send(request, timeout=5.0, what="ssm")
    try:
        return str(json.loads(body)["Parameter"]["Value"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DeliveryRefusedError("ssm", f"no Parameter.Value in the answer for {name}") from exc


def post_json(url: str, body: Mapping[str, Any], *, timeout: float) -> None:
    """POST ``body`` as JSON to the webhook; raise a NotifyError unless Slack says 2xx."""
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise DeliveryRefusedError("bad_url", "the webhook URL must be http(s)")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
        method="POST",
    )
    try:
        _send(request, timeout=timeout, what="slack")
    except DeliveryRefusedError:
        _cached_urls.clear()  # a revoked webhook: read the parameter again next time
        raise


def _send(request: urllib.request.Request, *, timeout: float, what: str) -> bytes:
    """Send; map HTTP 429/5xx and network errors to RetryLaterError, other 4xx to refused."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s)
            return bytes(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read(200).decode("utf-8", "replace")
        reason = f"{what}_http_{exc.code}"
        if exc.code == 429 or exc.code >= 500:
            retry_after = exc.headers.get("Retry-After")
            wait = float(retry_after) if retry_after and retry_after.isdigit() else None
            raise RetryLaterError(reason, detail, retry_after=wait) from exc
        raise DeliveryRefusedError(reason, detail) from exc
    except (urllib.error.URLError, OSError) as exc:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise RetryLaterError(f"{what}_connection", str(cause)) from exc
