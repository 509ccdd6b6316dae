"""The backend's answer to Greengrass configuration validation (``com.edge.backend``).

Imported only under Greengrass (it loads the pydantic settings model); the generic part lives in
:mod:`edgefleet.common.greengrass`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgefleet.backend.settings import BackendSettings
from edgefleet.common.greengrass import BACKEND_KEYS, check_configuration, watch_configuration


def check_backend_configuration(config: Mapping[str, Any]) -> str | None:
    """:func:`check_configuration` for ``com.edge.backend``."""
    return check_configuration(config, BackendSettings, BACKEND_KEYS)


def watch_backend_configuration(client: Any) -> None:
    """The backend's ``IpcTransport(on_client=...)`` hook: validate its deployments."""
    watch_configuration(client, check_backend_configuration)
