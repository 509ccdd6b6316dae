"""The agent under Greengrass (``com.edge.agent``): it answers configuration validation and
applies each deployment's configuration in place.

Imported only under Greengrass (it loads the pydantic settings model); the generic part lives in
:mod:`edgefleet.common.greengrass`. A deployment's configuration reaches the running agent
as ``SubscribeToConfigurationUpdate`` events; each one is followed by ``GetConfiguration`` of
the whole component configuration, turned into settings (:func:`agent_overrides`) and
reloaded like a SIGHUP (:mod:`edgefleet.agent.reload`): no component restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edgefleet.agent.reload import RECONNECT_FIELDS, RESTART_FIELDS
from edgefleet.agent.settings import AgentSettings
from edgefleet.common.greengrass import (
    AGENT_KEYS,
    check_configuration,
    rendered,
    watch_configuration,
)
from edgefleet.common.logs import kv
from edgefleet.transport.ipc import describe

log = logging.getLogger(__name__)

OnOverrides = Callable[[dict[str, str]], None]

LIVE_KEYS = frozenset(
    key for key, field in AGENT_KEYS.items() if field not in RESTART_FIELDS | RECONNECT_FIELDS
)
"""Recipe keys the running agent applies in place. The recipe must not interpolate them into
its lifecycle (``Setenv``, scripts): the nucleus restarts a component when an interpolated
value changes. The agent reads them over IPC instead (GetConfiguration at start, then on each
update). The other keys stay in ``Setenv``: changing them restarts the component."""


class ConfigSource(Protocol):
    """The part of ``GreengrassCoreIPCClientV2`` that following the configuration uses."""

    def subscribe_to_configuration_update(
        self,
        *,
        key_path: list[str],
        on_stream_event: Callable[[Any], None],
        on_stream_error: Callable[[Exception], bool],
        on_stream_closed: Callable[[], None],
    ) -> tuple[Any, Any]:
        """Subscribe (blocking); return (response, stream operation)."""
        ...

    def get_configuration_async(self, *, key_path: list[str]) -> Any:
        """Start a GetConfiguration; return a concurrent future of the response."""
        ...


def check_agent_configuration(config: Mapping[str, Any]) -> str | None:
    """:func:`check_configuration` for ``com.edge.agent``."""
    return check_configuration(config, AgentSettings, AGENT_KEYS)


def agent_overrides(config: Mapping[str, Any]) -> dict[str, str]:
    """The component configuration as settings (field -> text, as ``Setenv`` renders it);
    ``""`` means the built-in default, so it is left out like the Run step unsets it."""
    out: dict[str, str] = {}
    for key, field in AGENT_KEYS.items():
        value = config.get(key)
        if value is None or isinstance(value, dict | list) or rendered(value) == "":
            continue
        out[field] = rendered(value)
    return out


def follow_configuration(client: ConfigSource, on_config: Callable[[Any], None]) -> Any:
    """Subscribe to this component's configuration updates (blocking: run it in a thread);
    ``on_config(whole configuration)`` now and after every update. Return the stream."""

    def delivered(future: Any) -> None:
        try:
            value = future.result().value
        except Exception as exc:  # noqa: BLE001 - logged; the next update tries again
            log.error("could not read the component configuration", extra=kv(error=describe(exc)))
            return
        on_config(value or {})

    def fetch() -> None:
        client.get_configuration_async(key_path=[]).add_done_callback(delivered)

    def on_event(event: Any) -> None:
        if getattr(event, "configuration_update_event", None) is not None:
            fetch()

    def on_error(error: Exception) -> bool:
        log.error("configuration update stream error", extra=kv(error=describe(error)))
        return False

    def on_closed() -> None:
        log.warning("configuration update stream closed")

    _, stream = client.subscribe_to_configuration_update(
        key_path=[], on_stream_event=on_event, on_stream_error=on_error, on_stream_closed=on_closed
    )
    fetch()  # the configuration as deployed now (the process started with the Setenv part)
    log.info("following configuration updates from deployments")
    return stream


def watch_agent_configuration(client: Any) -> None:
    """Validate the agent's deployments (``IpcTransport(on_client=...)`` hook)."""
    watch_configuration(client, check_agent_configuration)


def agent_configuration_hook(on_overrides: OnOverrides) -> Callable[[Any], None]:
    """The agent's ``IpcTransport(on_client=...)`` hook: validate its deployments and pass
    each applied configuration, as settings, to ``on_overrides`` (on an IPC thread)."""

    def hook(client: Any) -> None:
        watch_agent_configuration(client)
        follow_configuration(client, lambda config: on_overrides(agent_overrides(config)))

    return hook
