"""The Greengrass IPC transport: publish and subscribe through the nucleus, not over mTLS.

Under AWS IoT Greengrass v2 a component talks to AWS IoT Core through the nucleus's MQTT
connection (``PublishToIoTCore`` / ``SubscribeToIoTCore``), authorised per topic by the
``aws.greengrass.ipc.mqttproxy`` access control of its recipe. This is the only module where
the IPC client's threads and futures live; above it, :class:`IpcTransport` has the same
interface as :class:`edgefleet.transport.mqtt.MqttClient`.

What a successful publish means here: the nucleus has put the message in its spooler (memory,
2.5 MiB by default), not that AWS IoT Core acknowledged it. The agent's durable queue stays in
front; see ``docs/greengrass.md``. Errors map as the publisher expects:

- ``UnauthorizedError`` (the recipe's access control denies the topic) ->
  :class:`PermanentPublishError` with reason 135, like a refusing PUBACK;
- anything else (spooler full, timeout, IPC trouble) -> :class:`TransportError`: the samples
  stay queued, and ``connected`` is cleared for a growing pause so the publisher backs off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

from edgefleet.common.logs import RateLimitedLog, kv
from edgefleet.errors import PermanentPublishError, TransportError
from edgefleet.transport.base import AckHandle, OnMessage
from edgefleet.transport.completions import Completions

if TYPE_CHECKING:
    from edgefleet.transport.base import Transport

log = logging.getLogger(__name__)

GREENGRASS_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"
QOS_AT_LEAST_ONCE = "1"  # awsiot.greengrasscoreipc.model.QOS.AT_LEAST_ONCE
GRANTED_QOS1 = 1
NOT_AUTHORIZED = 135


def under_greengrass(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process runs as a Greengrass component (the nucleus set its socket)."""
    return bool((os.environ if environ is None else environ).get(GREENGRASS_ENV))


def resolve_transport(
    setting: str, environ: Mapping[str, str] | None = None
) -> Literal["mqtt", "ipc"]:
    """The transport to use for a ``TRANSPORT`` setting of ``auto``, ``mqtt`` or ``ipc``."""
    if setting == "auto":
        return "ipc" if under_greengrass(environ) else "mqtt"
    return "ipc" if setting == "ipc" else "mqtt"


class IpcClient(Protocol):
    """The part of ``GreengrassCoreIPCClientV2`` this transport uses."""

    def publish_to_iot_core_async(
        self, *, topic_name: str, qos: str, payload: bytes
    ) -> concurrent.futures.Future[Any]:
        """Start a PublishToIoTCore; the future resolves once the nucleus took it."""
        ...

    def subscribe_to_iot_core_async(
        self,
        *,
        topic_name: str,
        qos: str,
        on_stream_event: Callable[[Any], None],
        on_stream_error: Callable[[Exception], bool],
        on_stream_closed: Callable[[], None],
    ) -> tuple[concurrent.futures.Future[Any], Any]:
        """Start a SubscribeToIoTCore; return (response future, stream operation)."""
        ...

    def close(self) -> Any:
        """Close the connection to the nucleus."""
        ...


ClientFactory = Callable[[], IpcClient]


def default_client_factory() -> IpcClient:
    """Connect to the nucleus (blocking: run it in a thread).

    Stream callbacks run on ONE worker thread, so messages reach ``on_message`` in order and
    never on the IPC networking thread.
    """
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    events = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipc-events")
    client: IpcClient = GreengrassCoreIPCClientV2(executor=events)
    return client


def is_unauthorized(exc: BaseException) -> bool:
    """True for the nucleus's ``UnauthorizedError`` (access control denied the operation)."""
    try:
        from awsiot.greengrasscoreipc.model import UnauthorizedError
    except ImportError:  # pragma: no cover - awsiotsdk is part of both extras
        return type(exc).__name__ == "UnauthorizedError"
    return isinstance(exc, UnauthorizedError)


def describe(exc: BaseException) -> str:
    """One line for an IPC error: its type and the nucleus's message, if any."""
    message = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class IpcTransport:
    """:class:`~edgefleet.transport.base.Transport` over Greengrass IPC.

    ``on_message(topic, payload)`` is called on the IPC event thread, in arrival order (as
    :class:`~edgefleet.transport.mqtt.MqttClient` calls it on its SDK thread);
    ``on_message_acked(topic, payload, None)`` is the same with the
    :data:`~edgefleet.transport.base.OnMessage` signature of a manually acknowledging
    transport: there is never a handle, as the nucleus acknowledges on receipt
    (``manual_ack`` is False, :meth:`ack` does nothing). ``on_connect``
    runs on the event loop once connected; ``on_client(client)`` runs in a worker thread
    right after the client is built (e.g. to subscribe to configuration validation).
    """

    manual_ack = False

    def __init__(
        self,
        *,
        client_factory: ClientFactory = default_client_factory,
        on_message: Callable[[str, bytes], None] | None = None,
        on_message_acked: OnMessage | None = None,
        on_connect: Callable[[], None] | None = None,
        on_client: Callable[[IpcClient], None] | None = None,
        timeout_s: float = 30.0,
        retry_s: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        self._factory = client_factory
        self.completions = Completions()  # publish answers; the publisher may hold them
        self._on_message = on_message
        self._on_message_acked = on_message_acked
        self._on_connect = on_connect
        self._on_client = on_client
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._pause_s = retry_s[0]
        self.connected = asyncio.Event()
        self.client: IpcClient | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._streams: list[Any] = []
        self._ratelog = RateLimitedLog(30.0)

    # --- connection -------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to the nucleus in the background (retrying with a growing pause)."""
        self._task = asyncio.get_running_loop().create_task(self._connect(), name="ipc-connect")

    async def _connect(self) -> None:
        delay = self._retry_s[0]
        while self.client is None:
            try:
                self.client = await asyncio.to_thread(self._factory)
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried
                self.last_error = describe(exc)
                if self._ratelog.allow("connect") is not None:
                    log.error("ipc connect failed", extra=kv(error=self.last_error, retry_s=delay))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_s[1])
        if self._on_client is not None:
            await asyncio.to_thread(self._run_on_client, self.client)
        self.connected.set()
        log.info("ipc connected to the Greengrass nucleus")
        if self._on_connect is not None:
            self._on_connect()

    def _run_on_client(self, client: IpcClient) -> None:
        assert self._on_client is not None  # noqa: S101 - only called when set
        try:
            self._on_client(client)
        except Exception as exc:  # noqa: BLE001 - an optional extra must not stop publishing
            log.warning("ipc client hook failed", extra=kv(error=describe(exc)))

    async def stop(self, wait_s: float = 3.0) -> None:
        """Close the streams and the connection to the nucleus."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._resume is not None:
            self._resume.cancel()
        self.connected.clear()
        for stream in self._streams:
            with contextlib.suppress(Exception):
                stream.close()
        self._streams.clear()
        client, self.client = self.client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(client.close), wait_s)
        except TimeoutError:
            log.warning("ipc client did not close in time", extra=kv(timeout_s=wait_s))
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            log.warning("ipc client close failed", extra=kv(error=describe(exc)))

    def _back_off(self) -> None:
        """Clear ``connected`` for a growing pause so the publisher does not spin."""
        if not self.connected.is_set() or self.client is None:
            return
        self.connected.clear()
        loop = asyncio.get_running_loop()
        self._resume = loop.call_later(self._pause_s, self._resume_now)
        self._pause_s = min(self._pause_s * 2, self._retry_s[1])

    def _resume_now(self) -> None:
        if self.client is not None:
            self.connected.set()

    # --- publish / subscribe ----------------------------------------------------------------
    def _require(self, what: str) -> IpcClient:
        if self.client is None or not self.connected.is_set():
            raise TransportError(f"{what}: not connected to the Greengrass nucleus")
        return self.client

    async def publish(self, topic: str, payload: bytes) -> int:
        """PublishToIoTCore at QoS 1; return 0 once the nucleus has spooled the message."""
        client = self._require(f"publish to {topic}")
        try:
            future = client.publish_to_iot_core_async(
                topic_name=topic, qos=QOS_AT_LEAST_ONCE, payload=payload
            )
            await asyncio.wait_for(self.completions.wrap(future), self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - mapped to our two error kinds below
            raise self._publish_error(topic, exc) from None
        self._pause_s = self._retry_s[0]
        return 0

    def _publish_error(self, topic: str, exc: Exception) -> TransportError:
        if is_unauthorized(exc):
            return PermanentPublishError(
                NOT_AUTHORIZED, f"{topic}: {describe(exc)} (check the recipe's accessControl)"
            )
        if isinstance(exc, TimeoutError):
            self.last_error = f"no answer from the nucleus in {self._timeout_s:g}s"
        else:
            self.last_error = describe(exc)
        self._back_off()
        return TransportError(f"publish to {topic} failed: {self.last_error}")

    def ack(self, handle: AckHandle | None) -> None:
        """Nothing to do: the nucleus acknowledged the message on receipt (no manual ack)."""

    async def subscribe(self, filters: list[str]) -> list[int]:
        """SubscribeToIoTCore at QoS 1 for each filter; return 1 (granted) or 135 (denied)."""
        return [await self._subscribe_one(f) for f in filters]

    async def _subscribe_one(self, topic_filter: str) -> int:
        client = self._require(f"subscribe to {topic_filter}")
        try:
            future, stream = client.subscribe_to_iot_core_async(
                topic_name=topic_filter,
                qos=QOS_AT_LEAST_ONCE,
                on_stream_event=self._on_event,
                on_stream_error=self._on_stream_error,
                on_stream_closed=lambda: self._on_stream_closed(topic_filter),
            )
            await asyncio.wait_for(self.completions.wrap(future), self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - mapped below
            if is_unauthorized(exc):
                log.error(
                    "subscription DENIED by the recipe's accessControl",
                    extra=kv(topic_filter=topic_filter, error=describe(exc)),
                )
                return NOT_AUTHORIZED
            raise TransportError(f"subscribe to {topic_filter} failed: {describe(exc)}") from None
        self._streams.append(stream)
        return GRANTED_QOS1

    # --- IPC callbacks (IPC event thread) ---------------------------------------------------
    def _on_event(self, event: Any) -> None:
        message = getattr(event, "message", None)
        if message is None:
            return
        payload = message.payload or b""
        if isinstance(payload, str):
            payload = payload.encode()
        if self._on_message_acked is not None:
            self._on_message_acked(str(message.topic_name), bytes(payload), None)
        elif self._on_message is not None:
            self._on_message(str(message.topic_name), bytes(payload))

    def _on_stream_error(self, error: Exception) -> bool:
        log.error("ipc subscription stream error", extra=kv(error=describe(error)))
        return False  # keep the stream open

    def _on_stream_closed(self, topic_filter: str) -> None:
        log.warning("ipc subscription closed", extra=kv(topic_filter=topic_filter))


if TYPE_CHECKING:

    def _conforms(transport: IpcTransport) -> Transport:
        """mypy checks here that :class:`IpcTransport` implements the Transport Protocol."""
        return transport
