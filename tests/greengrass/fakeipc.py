"""A stand-in for ``GreengrassCoreIPCClientV2``: the calls the transport and the configuration
validation make, answered from another thread like the real client, with scripted errors."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from awsiot.greengrasscoreipc.model import (
    ConfigurationUpdateEvent,
    ConfigurationUpdateEvents,
    GetConfigurationResponse,
    IoTCoreMessage,
    MQTTMessage,
    PublishToIoTCoreResponse,
    SubscribeToIoTCoreResponse,
    ValidateConfigurationUpdateEvent,
    ValidateConfigurationUpdateEvents,
)


def _resolve_later(result: Any = None, error: BaseException | None = None) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def finish() -> None:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    threading.Timer(0.001, finish).start()
    return future


@dataclass
class Stream:
    """What ``subscribe_*`` returns as the operation; ``close()`` is recorded."""

    closed: bool = False

    def subscribe_to_configuration_update(
        self, *, key_path: list[str], on_stream_event: Callable[[Any], None],
        on_stream_error: Callable[[Exception], bool], on_stream_closed: Callable[[], None],
    ) -> tuple[Any, Stream]:
        assert key_path == [], "the agent follows its whole configuration"
        self.config_updates = on_stream_event
        return object(), Stream()

    def get_configuration_async(self, *, key_path: list[str]) -> concurrent.futures.Future[Any]:
        assert key_path == []
        self.config_reads += 1
        value = dict(self.configuration)  # a snapshot, as the nucleus answers
        return _resolve_later(GetConfigurationResponse(component_name="com.edge.agent", value=value))

    def update(self, configuration: dict[str, Any]) -> None:
        """A deployment applying ``configuration`` (merged into the component's): the nucleus
        stores it, then notifies the subscriber on another thread with the changed key."""
        assert self.config_updates is not None, "nobody subscribed to configuration updates"
        self.configuration.update(configuration)
        for key in configuration:
            event = ConfigurationUpdateEvents(configuration_update_event=ConfigurationUpdateEvent(
                component_name="com.edge.agent", key_path=[key]))
            thread = threading.Thread(target=self.config_updates, args=(event,))
            thread.start()
            thread.join()

    def close(self) -> concurrent.futures.Future[Any]:
        self.closed = True
        return _resolve_later()


@dataclass
class FakeIpcClient:
    """Records every call; ``publish_errors`` are raised (in order) before publishes succeed."""

    publish_errors: list[BaseException] = field(default_factory=list)
    subscribe_errors: dict[str, BaseException] = field(default_factory=dict)
    hang: bool = False
    published: list[tuple[str, str, bytes]] = field(default_factory=list)
    attempts: int = 0
    subscriptions: dict[str, tuple[str, Callable[[Any], None]]] = field(default_factory=dict)
    streams: list[Stream] = field(default_factory=list)
    validation: Callable[[Any], None] | None = None
    reports: list[Any] = field(default_factory=list)
    configuration: dict[str, Any] = field(default_factory=dict)
    config_updates: Callable[[Any], None] | None = None
    config_reads: int = 0
    closed: bool = False

    def publish_to_iot_core_async(
        self, *, topic_name: str, qos: str, payload: bytes
    ) -> concurrent.futures.Future[Any]:
        self.attempts += 1
        if self.hang:
            return concurrent.futures.Future()
        if self.publish_errors:
            return _resolve_later(error=self.publish_errors.pop(0))
        self.published.append((topic_name, qos, payload))
        return _resolve_later(PublishToIoTCoreResponse())

    def subscribe_to_iot_core_async(
        self, *, topic_name: str, qos: str, on_stream_event: Callable[[Any], None],
        on_stream_error: Callable[[Exception], bool], on_stream_closed: Callable[[], None],
    ) -> tuple[concurrent.futures.Future[Any], Stream]:
        stream = Stream()
        if topic_name in self.subscribe_errors:
            return _resolve_later(error=self.subscribe_errors[topic_name]), stream
        self.subscriptions[topic_name] = (qos, on_stream_event)
        self.streams.append(stream)
        return _resolve_later(SubscribeToIoTCoreResponse()), stream

    def deliver(self, topic_filter: str, topic: str, payload: bytes) -> None:
        """A message from AWS IoT Core on a subscribed filter, on another thread."""
        _qos, handler = self.subscriptions[topic_filter]
        event = IoTCoreMessage(message=MQTTMessage(topic_name=topic, payload=payload))
        thread = threading.Thread(target=handler, args=(event,))
        thread.start()
        thread.join()

    def subscribe_to_validate_configuration_updates(
        self, *, on_stream_event: Callable[[Any], None],
        on_stream_error: Callable[[Exception], bool], on_stream_closed: Callable[[], None],
    ) -> tuple[Any, Stream]:
        self.validation = on_stream_event
        return object(), Stream()

    def propose(self, configuration: dict[str, Any], deployment_id: str = "dep-1") -> None:
        """A deployment proposing ``configuration``, delivered like the nucleus does."""
        assert self.validation is not None, "nobody subscribed to configuration validation"
        update = ValidateConfigurationUpdateEvent(configuration=configuration, deployment_id=deployment_id)
        self.validation(ValidateConfigurationUpdateEvents(validate_configuration_update_event=update))

    def send_configuration_validity_report_async(
        self, *, configuration_validity_report: Any
    ) -> concurrent.futures.Future[Any]:
        self.reports.append(configuration_validity_report)
        return _resolve_later()

    def subscribe_to_configuration_update(
        self, *, key_path: list[str], on_stream_event: Callable[[Any], None],
        on_stream_error: Callable[[Exception], bool], on_stream_closed: Callable[[], None],
    ) -> tuple[Any, Stream]:
        assert key_path == [], "the agent follows its whole configuration"
        self.config_updates = on_stream_event
        return object(), Stream()

    def get_configuration_async(self, *, key_path: list[str]) -> concurrent.futures.Future[Any]:
        assert key_path == []
        self.config_reads += 1
        value = dict(self.configuration)  # a snapshot, as the nucleus answers
        return _resolve_later(GetConfigurationResponse(component_name="com.edge.agent", value=value))

    def update(self, configuration: dict[str, Any]) -> None:
        """A deployment applying ``configuration`` (merged into the component's): the nucleus
        stores it, then notifies the subscriber on another thread with the changed key."""
        assert self.config_updates is not None, "nobody subscribed to configuration updates"
        self.configuration.update(configuration)
        for key in configuration:
            event = ConfigurationUpdateEvents(configuration_update_event=ConfigurationUpdateEvent(
                component_name="com.edge.agent", key_path=[key]))
            thread = threading.Thread(target=self.config_updates, args=(event,))
            thread.start()
            thread.join()

    def close(self) -> concurrent.futures.Future[Any]:
        self.closed = True
        return _resolve_later()
