"""``edgefleet simulate`` (flags in ``edgefleet.cli``): signals and the one-line summary."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from edgefleet.sim.options import SimOptions, options_from_args
from edgefleet.sim.runner import run_simulation
from edgefleet.sim.truth import Truth


async def _main(opts: SimOptions) -> Truth:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await run_simulation(opts, stop)


def run(args: argparse.Namespace) -> int:
    """Run the simulation the flags describe; write a one-line summary to stdout."""
    opts = options_from_args(args)
    truth = asyncio.run(_main(opts))
    totals = truth.to_json()["totals"]
    sys.stdout.write(
        f"simulated {totals['devices']} devices: {totals['count']} samples acked in "
        f"{totals['messages']} messages, {totals['pending']} pending, "
        f"{totals['dropouts']} dropouts, {totals['spikes']} spikes, connect {truth.connect_s}s"
        + (f"; truth in {opts.truth_file}" if opts.truth_file else "")
        + "\n"
    )
    return 0
