"""``edgefleet simulate`` (flags in ``edgefleet.cli``): signals and the one-line summary.

Exit codes: 0 when the broker acknowledged at least one sample, 1 when it acknowledged none
(no broker answer, every publish refused, stopped before the first sample), 2 for a bad
option, a refused connection or device names a running demo uses (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

from edgefleet.errors import ConfigError
from edgefleet.sim.options import SimOptions, options_from_args
from edgefleet.sim.runner import run_simulation
from edgefleet.sim.truth import Truth


def check_broker_listens(endpoint: str, port: int, timeout_s: float = 3.0) -> None:
    """Refuse to start when nothing listens at ``endpoint:port`` (one line instead of an
    SDK error per device). Any other network trouble is left to the clients' retries."""
    try:
        with socket.create_connection((endpoint, port), timeout=timeout_s):
            return
    except ConnectionRefusedError:
        raise ConfigError(
            f"connection refused at {endpoint}:{port} — is the broker running?"
        ) from None
    except OSError:
        return


async def _main(opts: SimOptions) -> Truth:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await run_simulation(opts, stop)


def run(args: argparse.Namespace) -> int:
    """Run the simulation the flags describe; write a one-line summary to stdout."""
    opts = options_from_args(args)
    check_broker_listens(opts.endpoint, opts.port)
    truth = asyncio.run(_main(opts))
    totals = truth.to_json()["totals"]
    sys.stdout.write(
        f"simulated {totals['devices']} devices: {totals['count']} samples acked in "
        f"{totals['messages']} messages, {totals['pending']} pending, "
        f"{totals['dropouts']} dropouts, {totals['spikes']} spikes, connect {truth.connect_s}s"
        + (f"; truth in {opts.truth_file}" if opts.truth_file else "")
        + "\n"
    )
    if totals["count"] == 0:
        sys.stderr.write(
            f"edgefleet simulate: error: the broker at {opts.endpoint}:{opts.port} "
            f"acknowledged no sample ({totals['pending']} pending); see the log above\n"
        )
        return 1
    return 0
