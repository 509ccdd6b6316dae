"""``python -m edgefleet.agent.resolve [FILE]``: the agent's settings, validated, as JSON.

Started by the running agent for each reload (:func:`edgefleet.agent.reload.resolve`), so
pydantic is loaded in this short-lived child and never in the agent. It reads the settings
as ``edgefleet agent`` does at start (``FILE`` or ``EDGE_AGENT_CONFIG``, then the
environment), with the JSON object on stdin (field -> value, the Greengrass component
configuration) on top, and prints :meth:`AgentConfig.to_json_dict`. A bad setting: one line
on stderr, exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.settings import AgentSettings
from edgefleet.common.settings import load_settings
from edgefleet.errors import ConfigError


def _overrides(text: str) -> dict[str, object]:
    doc = json.loads(text or "{}")
    if not isinstance(doc, dict):
        raise ConfigError("settings overrides must be a JSON object")
    return doc


def main(argv: list[str]) -> int:
    """Print the resolved settings; return the exit code."""
    try:
        overrides = _overrides(sys.stdin.read())
        file = Path(argv[0]) if argv else None
        settings = load_settings(AgentSettings, file, **overrides)
        doc = AgentConfig.from_settings(settings).to_json_dict()
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"edgefleet agent: error: {exc}\n")
        return 2
    sys.stdout.write(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
