"""The agent's answer to Greengrass configuration validation (``com.edge.agent``).

Imported only under Greengrass (it loads the pydantic settings model); the generic part lives in
:mod:`edgefleet.common.greengrass`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgefleet.agent.settings import AgentSettings
from edgefleet.common.greengrass import AGENT_KEYS, check_configuration, watch_configuration


def check_agent_configuration(config: Mapping[str, Any]) -> str | None:
    """:func:`check_configuration` for ``com.edge.agent``."""
    return check_configuration(config, AgentSettings, AGENT_KEYS)


def watch_agent_configuration(client: Any) -> None:
    """The agent's ``IpcTransport(on_client=...)`` hook: validate its deployments."""
    watch_configuration(client, check_agent_configuration)
