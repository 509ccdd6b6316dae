"""The long-running agent: the process image ``edgefleet agent`` re-executes itself into.

``python -m edgefleet.agent.run`` is started only by :func:`edgefleet.agent.process.run_agent`
(same PID, via ``execve``), after it validated the settings with pydantic-settings and ran
the preflight checks. It reads the validated settings from the environment (see
:mod:`edgefleet.agent.config`) and runs the agent, without ever importing pydantic,
pydantic-settings or importlib.metadata. Errors end it as ``edgefleet agent`` would: one line
on stderr and exit code 2.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the runtime image only: importing this module changes nothing
    # Nothing here uses Python's ssl (awscrt has its own TLS); asyncio imports it only to offer
    # TLS transports and works without it. Left out, OpenSSL's libssl and libcrypto stay out
    # of the process: about 4 MiB of RSS (bench/notes.md).
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

from edgefleet.agent.config import Handover
from edgefleet.agent.process import serve
from edgefleet.common.logs import setup_logging
from edgefleet.errors import EdgefleetError


def main() -> int:
    """Run the agent handed over by ``edgefleet agent``; return the exit code."""
    try:
        handed = Handover.take()
        setup_logging(handed.log_level, handed.log_format)
        return serve(handed.config, handed.config_file)
    except EdgefleetError as exc:
        sys.stderr.write(f"edgefleet agent: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
