"""edgefleet: watch a fleet of Linux edge devices through AWS IoT Core.

Sub-packages read as the architecture:

- ``edgefleet.common``: the wire contract, settings helpers, the development PKI and the
  Mosquitto harness that stands in for AWS IoT Core. No heavy dependencies.
- ``edgefleet.agent``: runs on every device (extra ``agent``).
- ``edgefleet.backend``: ingest, fleet state, alerts and the dashboard (extra ``backend``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgefleet")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
