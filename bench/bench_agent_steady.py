"""The agent's own cost in steady state: CPU and RSS at a 1 s interval against Mosquitto.

Run: ``python bench/bench_agent_steady.py [--duration 60] [--interval 1] [--warmup 5]``.

Starts a Mosquitto on 127.0.0.1 (temp folder), a subscriber as the backend, then the real
agent process (``python -m edgefleet agent``) three times: with ``EDGE_AGENT_AWS_LIMITS=false``,
with the AWS limits on (the default, i.e. production) and ``EDGE_AGENT_DELIVERY=broker``
(acknowledgements off: a PUBACK deletes), and with the AWS limits on and
``EDGE_AGENT_DELIVERY=backend`` (acknowledgements on: the subscriber answers with commit
watermarks the way the backend does by default: the first at once, then every 60 s or every
200 samples, whichever comes first; samples leave the queue only on them). For each run it
measures, after a warm-up that excludes the start (imports, TLS handshake):

- CPU as % of one core: ``psutil.Process(pid).cpu_times()`` (user + system) delta over the
  window divided by the window's wall time;
- RSS: maximum over the whole run (sampled twice a second) and the final value;
- messages and samples the subscriber received, and seqs missing (neither received nor left
  in the queue after SIGTERM), and how long SIGTERM took.

Targets: < 1 % of one core, < 40 MiB RSS, SIGTERM flush < 5 s, nothing missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    MIB,
    THING,
    AgentProcess,
    Received,
    broker_in,
    exit_on_sigterm,
    figure,
    print_machine,
    print_result,
    start_subscriber,
)
from edgefleet.agent.queue import open_queue
from edgefleet.common.logs import setup_logging
from edgefleet.wire.base import ack_topic, encode_ack

CPU_TARGET = 1.0
RSS_TARGET_MIB = 40.0
STOP_TARGET_S = 5.0


def still_queued(path: Path) -> set[int]:
    queue = open_queue("sqlite", path, max_bytes=1 << 30, max_samples=10**7)
    try:
        return {s.seq for s in queue.peek(max_samples=10**7, max_bytes=1 << 40)}
    finally:
        queue.close()


class Watermarks:
    """Answers the agent like the backend's default acknowledgement policy."""

    def __init__(self, got: Received, publish: Any) -> None:
        self.got, self.publish = got, publish
        self.sent = 0
        self._last: tuple[float, int] | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            have = self.got.unique()
            through = -1
            while through + 1 in have:
                through += 1
            last = self._last
            due = through >= 0 and (last is None or (through > last[1] and (
                time.monotonic() - last[0] >= 60 or through - last[1] >= 200)))
            if due and self.got.first_payload is not None:
                stream = json.loads(self.got.first_payload)["stream"]
                await self.publish(ack_topic(THING), encode_ack(stream, through))
                self._last = (time.monotonic(), through)
                self.sent += 1


async def one_run(
    workdir: Path, args: argparse.Namespace, aws_limits: bool, acks: bool | None = None,
) -> dict[str, Any]:
    """One agent process, measured; returns its figures (``acks`` None: the default)."""
    with broker_in(workdir) as broker:
        got = Received()
        subscriber = await start_subscriber(broker, got)
        settings: dict[str, Any] = {"interval_s": args.interval,
                                    "aws_limits": str(aws_limits).lower()}
        if acks is not None:
            settings["delivery"] = "backend" if acks else "broker"
        agent = AgentProcess(broker, workdir, **settings)
        answer = Watermarks(got, subscriber.publish)
        responder = asyncio.create_task(answer.run()) if acks else None
        try:
            agent.start()
            rss_max = 0
            # warm-up: start, connect, first messages; the window opens after it
            if not await got.wait_for(lambda: got.arrivals, 30, alive=lambda: agent.alive):
                raise RuntimeError(f"agent sent nothing in 30 s:\n{agent.log_tail()}")
            while time.monotonic() < agent.started_at + args.warmup:
                rss_max = max(rss_max, agent.rss())
                await asyncio.sleep(0.5)
            cpu0, wall0, msgs0 = agent.cpu_seconds(), time.monotonic(), len(got.arrivals)
            end = wall0 + args.duration
            rss = agent.rss()
            while time.monotonic() < end:
                if not agent.alive:
                    raise RuntimeError(f"agent exited during the run:\n{agent.log_tail()}")
                rss = agent.rss()
                rss_max = max(rss_max, rss)
                await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
            cpu1, wall1, msgs1 = agent.cpu_seconds(), time.monotonic(), len(got.arrivals)
            rss = agent.rss()
            rss_max = max(rss_max, rss)
            stop_s = agent.stop()
        finally:
            agent.stop()
            if responder is not None:
                responder.cancel()
            with contextlib.suppress(Exception):
                await subscriber.stop(2.0)
    got.check_first()
    received = got.unique()
    queued = still_queued(agent.queue_path)
    top = max(received | queued, default=-1)
    missing = len(set(range(top + 1)) - received - queued)
    return {
        "aws_limits": aws_limits,
        "acks": acks,
        "watermarks": answer.sent,
        "cpu_percent": 100.0 * (cpu1 - cpu0) / (wall1 - wall0),
        "window_s": wall1 - wall0,
        "rss_max_mib": rss_max / MIB,
        "rss_final_mib": rss / MIB,
        "messages_in_window": msgs1 - msgs0,
        "samples_received": len(received),
        "samples_left_queued": len(queued),
        "duplicates": got.duplicates(),
        "missing": missing,
        "stop_s": stop_s,
        "statuses": got.statuses,
    }


def report(run: dict[str, Any]) -> list[dict[str, Any]]:
    label = "aws_limits on (production)" if run["aws_limits"] else "aws_limits off"
    if run["acks"] is not None:
        label += (f", acknowledgements on ({run['watermarks']} watermarks)" if run["acks"]
                  else ", acknowledgements off")
    stop_s = run["stop_s"]
    print(f"\n{label}")
    print(f"  CPU        {run['cpu_percent']:.2f} % of one core over {run['window_s']:.1f} s "
          f"(target < {CPU_TARGET:g} %)")
    print(f"  RSS        max {run['rss_max_mib']:.1f} MiB, final {run['rss_final_mib']:.1f} MiB "
          f"(target < {RSS_TARGET_MIB:g} MiB)")
    print(f"  delivered  {run['messages_in_window']} messages in the window; "
          f"{run['samples_received']} samples received, {run['samples_left_queued']} left "
          f"queued, {run['missing']} missing, {run['duplicates']} duplicates")
    print(f"  SIGTERM    exited in {'(killed)' if stop_s is None else f'{stop_s:.2f} s'} "
          f"(target < {STOP_TARGET_S:g} s); status messages seen: {run['statuses']}")
    tag = "on" if run["aws_limits"] else "off"
    if run["acks"] is not None:
        tag += ", acks on" if run["acks"] else ", acks off"
    return [
        figure(f"CPU, aws_limits {tag}", round(run["cpu_percent"], 3), "% of one core",
               f"< {CPU_TARGET:g}", run["cpu_percent"] < CPU_TARGET),
        figure(f"RSS max, aws_limits {tag}", round(run["rss_max_mib"], 1), "MiB",
               f"< {RSS_TARGET_MIB:g}", run["rss_max_mib"] < RSS_TARGET_MIB),
        figure(f"RSS final, aws_limits {tag}", round(run["rss_final_mib"], 1), "MiB",
               f"< {RSS_TARGET_MIB:g}", run["rss_final_mib"] < RSS_TARGET_MIB),
        figure(f"missing seqs, aws_limits {tag}", run["missing"], "samples", "0",
               run["missing"] == 0),
        figure(f"SIGTERM to exit, aws_limits {tag}",
               -1 if stop_s is None else round(stop_s, 2), "s", f"< {STOP_TARGET_S:g}",
               stop_s is not None and stop_s < STOP_TARGET_S),
    ]


async def main_async(args: argparse.Namespace) -> None:
    figures: list[dict[str, Any]] = []
    runs: dict[Any, dict[str, Any]] = {}
    for aws_limits, acks in ((False, None), (True, False), (True, True)):
        with tempfile.TemporaryDirectory(prefix="bench-steady-") as tmp:
            run = await one_run(Path(tmp), args, aws_limits, acks)
        runs[acks] = run
        figures += report(run)
    off, on = runs[False], runs[True]
    cpu_ratio = on["cpu_percent"] / off["cpu_percent"] if off["cpu_percent"] else 0.0
    rss_ratio = on["rss_max_mib"] / off["rss_max_mib"]
    print(f"\nacknowledgements on / off: CPU x{cpu_ratio:.2f}, RSS max x{rss_ratio:.2f} "
          f"(target <= 1.10)")
    figures += [
        figure("CPU, acks on / acks off", round(cpu_ratio, 3), "ratio", "<= 1.10",
               cpu_ratio <= 1.10),
        figure("RSS max, acks on / acks off", round(rss_ratio, 3), "ratio", "<= 1.10",
               rss_ratio <= 1.10),
    ]
    print_result("agent_steady", figures, interval_s=args.interval, window_s=args.duration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured window, s")
    parser.add_argument("--interval", type=float, default=1.0, help="agent interval_s")
    parser.add_argument("--warmup", type=float, default=5.0, help="start-up left out, s")
    args = parser.parse_args()
    exit_on_sigterm()
    setup_logging("ERROR")
    print_machine()
    print(f"workload  agent at interval {args.interval:g} s, all collectors, SQLite queue; "
          f"window {args.duration:g} s after {args.warmup:g} s warm-up; Mosquitto + "
          f"subscriber in this process on the same machine")
    sys.stdout.flush()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
