"""The agent's preflight: what must hold before it starts, and before new settings apply.

Pydantic-free (the long-running image runs it again on every settings reload).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.agent.config import AgentConfig
from edgefleet.common.files import check_cert_file, check_private_key, check_queue_path
from edgefleet.errors import ConfigError
from edgefleet.transport.ipc import GREENGRASS_ENV, resolve_transport, under_greengrass

if TYPE_CHECKING:
    from edgefleet.agent.settings import AgentSettings


def preflight(settings: AgentConfig | AgentSettings) -> str:
    """Check what the agent needs before it starts; return the thing name."""
    s = AgentConfig.from_settings(settings)
    if not s.thing_name:
        raise ConfigError("EDGE_AGENT_THING_NAME is not set (the device's AWS IoT thing name)")
    if s.queue == "sqlite":
        check_queue_path(s.queue_path, "EDGE_AGENT_QUEUE_PATH")
    if resolve_transport(s.transport) == "ipc":
        if not under_greengrass():
            raise ConfigError(
                f"EDGE_AGENT_TRANSPORT=ipc needs the Greengrass nucleus ({GREENGRASS_ENV} is "
                "not set): run the agent as a Greengrass component, or use mqtt"
            )
        return s.thing_name  # the nucleus holds the connection and its certificate
    for name in ("cert_file", "key_file", "ca_file"):
        if getattr(s, name) is None:
            raise ConfigError(f"EDGE_AGENT_{name.upper()} is not set")
    assert s.cert_file and s.key_file and s.ca_file  # noqa: S101 - checked just above
    check_cert_file(s.cert_file, "EDGE_AGENT_CERT_FILE")
    check_cert_file(s.ca_file, "EDGE_AGENT_CA_FILE")
    check_private_key(s.key_file, "EDGE_AGENT_KEY_FILE")
    return s.thing_name
