"""edgefleet: watch a fleet of Linux edge devices through AWS IoT Core.

Sub-packages read as the architecture:

- ``edgefleet.common``: the wire contract, settings helpers, the development PKI and the
  Mosquitto harness that stands in for AWS IoT Core. No heavy dependencies.
- ``edgefleet.agent``: runs on every device (extra ``agent``).
- ``edgefleet.backend``: ingest, fleet state, alerts and the dashboard (extra ``backend``).
"""

# A literal, not importlib.metadata: that import alone costs the edge agent ~2 MiB of RSS.
# pyproject.toml's ``version`` must say the same (tests/agent/test_agent_lean.py checks it).
__version__ = "0.1.0"

__all__ = ["__version__"]
