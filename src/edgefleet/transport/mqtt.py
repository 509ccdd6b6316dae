"""The awscrt MQTT5 adapter: the only module where the SDK's threads and callbacks live.

Everything above it awaits :meth:`MqttClient.publish` / reads received messages from an
asyncio queue. Choices, from ``shared/FACTS.md``:

- QoS 1 only (AWS IoT Core rejects QoS 2, the Last Will included).
- ``FAIL_ALL_ON_DISCONNECT``: the SDK's offline queue is unbounded and lost on a crash; our
  durable queue holds the data instead, so a publish while offline fails at once.
- keep-alive 30 s with a 10 s ping timeout (the SDK's default of 1200 s hides a dead link).
- AWS IoT Core's client-side limits stay on unless ``aws_limits=False`` (local broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.errors import ConfigError, PermanentPublishError, TransportError
from edgefleet.transport.base import AckHandle, OnMessage
from edgefleet.transport.completions import Completions, Sent

if TYPE_CHECKING:
    from edgefleet.transport.base import Transport

log = logging.getLogger(__name__)

NOT_AUTHORIZED = 135
QOS1 = 1


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """How to reach the broker and who we are."""

    endpoint: str
    port: int
    cert_file: Path
    key_file: Path
    ca_file: Path | None
    client_id: str
    keep_alive_s: int = 30
    ping_timeout_ms: int = 10_000
    aws_limits: bool = True
    ack_timeout_s: int = 30
    min_reconnect_ms: int = 1_000
    max_reconnect_ms: int = 60_000
    will: tuple[str, bytes] | None = None
    session_expiry_s: int = 0
    receive_maximum: int | None = None
    on_connect: Callable[[], None] | None = field(default=None, compare=False)
    on_disconnect: Callable[[], None] | None = field(default=None, compare=False)


def _describe(exc: object) -> str:
    name = getattr(exc, "name", None)
    return str(name or exc)


class MqttClient:
    """An awscrt MQTT5 client bound to an asyncio loop: a
    :class:`~edgefleet.transport.base.Transport` with manual PUBACK."""

    manual_ack = True

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        on_message_acked: OnMessage | None = None,
    ) -> None:
        """``on_message`` gets (topic, payload) and the SDK acknowledges on return;
        ``on_message_acked`` also gets an ack handle to pass to :meth:`ack` once the
        message is stored (manual PUBACK: a crash before that means redelivery)."""
        self.cfg = cfg
        self._loop = loop or asyncio.get_running_loop()
        self._on_message = on_message
        self._on_message_acked = on_message_acked
        self.connected = asyncio.Event()
        self.stopped = asyncio.Event()
        self.completions = Completions()  # publish answers; the publisher may hold them
        self.last_error: str | None = None
        self.connect_failures = 0
        self._ratelog = RateLimitedLog(30.0)
        self._client: Any = self._build()

    # --- construction -------------------------------------------------------------------
    def _build(self) -> Any:
        from awscrt import mqtt5

        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "endpoint": cfg.endpoint,
            "port": cfg.port,
            "cert_filepath": str(cfg.cert_file),
            "pri_key_filepath": str(cfg.key_file),
            "client_id": cfg.client_id,
            "keep_alive_interval_sec": cfg.keep_alive_s,
            "ping_timeout_ms": cfg.ping_timeout_ms,
            "ack_timeout_sec": cfg.ack_timeout_s,
            "min_reconnect_delay_ms": cfg.min_reconnect_ms,
            "max_reconnect_delay_ms": cfg.max_reconnect_ms,
            "retry_jitter_mode": mqtt5.ExponentialBackoffJitterMode.FULL,
            "offline_queue_behavior": mqtt5.ClientOperationQueueBehaviorType.FAIL_ALL_ON_DISCONNECT,
            "on_lifecycle_connection_success": self._cb_success,
            "on_lifecycle_connection_failure": self._cb_failure,
            "on_lifecycle_disconnection": self._cb_disconnect,
            "on_lifecycle_stopped": self._cb_stopped,
            "enable_metrics_collection": False,
        }
        if cfg.ca_file is not None:
            kwargs["ca_filepath"] = str(cfg.ca_file)
        if not cfg.aws_limits:
            kwargs["extended_validation_and_flow_control_options"] = (
                mqtt5.ExtendedValidationAndFlowControlOptions.NONE
            )
        if cfg.session_expiry_s:
            kwargs["session_behavior"] = mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS
            kwargs["session_expiry_interval_sec"] = cfg.session_expiry_s
        if cfg.receive_maximum:
            kwargs["receive_maximum"] = cfg.receive_maximum
        if cfg.will is not None:
            kwargs["will"] = mqtt5.PublishPacket(
                topic=cfg.will[0], payload=cfg.will[1], qos=mqtt5.QoS.AT_LEAST_ONCE
            )
        if self._on_message is not None or self._on_message_acked is not None:
            kwargs["on_publish_received"] = self._cb_publish
        return self._create(kwargs)

    @staticmethod
    def _create(kwargs: dict[str, Any]) -> Any:
        from awsiot import mqtt5_client_builder

        for key in ("cert_filepath", "pri_key_filepath", "ca_filepath"):
            path = kwargs.get(key)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{key.replace('_filepath', '')} file {path} does not exist")
        try:
            return mqtt5_client_builder.mtls_from_path(**kwargs)
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot build MQTT client from {kwargs['cert_filepath']} and "
                f"{kwargs['pri_key_filepath']}: {_describe(exc)} (do key and certificate match?)"
            ) from None

    # --- SDK callbacks (CRT threads) ------------------------------------------------------
    def _cb_success(self, data: Any) -> None:
        self.connect_failures = 0
        self.last_error = None
        self._loop.call_soon_threadsafe(self.connected.set)
        log.info("mqtt connected", extra=kv(client_id=self.cfg.client_id, port=self.cfg.port))
        if self.cfg.on_connect is not None:
            self._loop.call_soon_threadsafe(self.cfg.on_connect)

    def _cb_failure(self, data: Any) -> None:
        self.connect_failures += 1
        reason = _describe(data.exception)
        connack = getattr(data, "connack_packet", None)
        if connack is not None and connack.reason_code is not None:
            reason = f"CONNACK {int(connack.reason_code)} {reason}"
        self.last_error = reason
        endpoint = f"{self.cfg.endpoint}:{self.cfg.port}"
        message, hint = "mqtt connection failed", ""
        if "CONNECTION_REFUSED" in reason:
            message = f"mqtt connection refused at {endpoint} — is the broker running?"
        elif "NEGOTIATION_FAILURE" in reason or "TLS_ERROR_READ_FAILURE" in reason:
            hint = "TLS handshake failed: is this certificate signed by a CA the broker trusts?"
        elif "TIMEOUT" in reason or "SOCKET" in reason:
            hint = "network: the broker did not answer in time"
        if self._ratelog.allow("fail") is not None:
            log.error(
                message,
                extra=kv(
                    client_id=self.cfg.client_id,
                    endpoint=endpoint,
                    reason=reason,
                    failures=self.connect_failures,
                    hint=hint,
                ),
            )

    def _cb_disconnect(self, data: Any) -> None:
        self._loop.call_soon_threadsafe(self.connected.clear)
        if self.cfg.on_disconnect is not None:
            self._loop.call_soon_threadsafe(self.cfg.on_disconnect)
        reason = _describe(data.exception)
        level = logging.INFO if "USER_REQUESTED" in reason else logging.WARNING
        log.log(level, "mqtt disconnected", extra=kv(client_id=self.cfg.client_id, reason=reason))

    def _cb_stopped(self, data: Any) -> None:
        self._loop.call_soon_threadsafe(self.stopped.set)

    def _cb_publish(self, data: Any) -> None:
        packet = data.publish_packet
        payload = bytes(packet.payload or b"")
        if self._on_message_acked is not None:
            take = data.acquire_publish_acknowledgement_control
            handle = AckHandle(take()) if take else None
            self._on_message_acked(packet.topic, payload, handle)
        elif self._on_message is not None:
            self._on_message(packet.topic, payload)

    def ack(self, handle: AckHandle | None) -> None:
        """Send the PUBACK for a message received through ``on_message_acked``."""
        if handle is not None:
            self._client.invoke_publish_acknowledgement(handle)

    # --- public API -----------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting (and reconnecting with backoff and jitter)."""
        self._client.start()

    async def stop(self, wait_s: float = 3.0, *, send_will: bool = False) -> None:
        """Disconnect and wait for the client to stop; the broker publishes the Last Will
        only with ``send_will`` (DISCONNECT reason 0x04, as when a device dies)."""
        from awscrt import mqtt5

        reason = mqtt5.DisconnectReasonCode.NORMAL_DISCONNECTION
        if send_will:
            reason = mqtt5.DisconnectReasonCode.DISCONNECT_WITH_WILL_MESSAGE
        self._client.stop(mqtt5.DisconnectPacket(reason_code=reason))
        try:
            await asyncio.wait_for(self.stopped.wait(), wait_s)
        except TimeoutError:
            log.warning("mqtt client did not stop in time", extra=kv(timeout_s=wait_s))
        self.connected.clear()

    async def publish(self, topic: str, payload: bytes) -> int:
        """QoS 1 publish; return the PUBACK reason code (< 128).

        Raises :class:`PermanentPublishError` for a refusing PUBACK (>= 128) and
        :class:`TransportError` when the outcome is unknown (offline, timeout).
        """
        return await self.finish(self.start_publish(topic, payload))

    def start_publish(self, topic: str, payload: bytes) -> Sent:
        """Hand a QoS 1 publish to the SDK (any thread: the SDK's client is thread-safe);
        its answer is :meth:`finish` (awaited on the loop) or :meth:`answer` (once done)."""
        from awscrt import mqtt5

        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
        return Sent(topic, self._client.publish(packet))

    async def finish(self, sent: Sent) -> int:
        """Wait for ``sent``'s answer on the event loop (see :meth:`publish`)."""
        with contextlib.suppress(Exception):  # mapped by answer()
            await self.completions.wrap(sent.future)
        return self.answer(sent)

    @staticmethod
    def answer(sent: Sent) -> int:
        """The answer of a publish that is done (see :meth:`publish` for what it raises)."""
        exc = sent.future.exception()
        if exc is not None:  # every SDK failure means "outcome unknown"
            raise TransportError(f"publish to {sent.topic} failed: {_describe(exc)}")
        puback = sent.future.result().puback
        code = int(puback.reason_code) if puback is not None else 0
        if code >= 128:
            raise PermanentPublishError(code, f"{sent.topic}: {puback.reason_string or ''}".strip())
        return code

    async def subscribe(self, filters: list[str]) -> list[int]:
        """Subscribe at QoS 1; return the SUBACK reason codes."""
        from awscrt import mqtt5

        packet = mqtt5.SubscribePacket(
            subscriptions=[
                mqtt5.Subscription(topic_filter=f, qos=mqtt5.QoS.AT_LEAST_ONCE) for f in filters
            ]
        )
        try:
            suback = await asyncio.wrap_future(self._client.subscribe(packet))
        except Exception as exc:  # noqa: BLE001 - SDK raises its own error types
            raise TransportError(f"subscribe failed: {_describe(exc)}") from None
        return [int(c) for c in suback.reason_codes]


if TYPE_CHECKING:

    def _conforms(client: MqttClient) -> Transport:
        """mypy checks here that :class:`MqttClient` implements the Transport Protocol."""
        return client
