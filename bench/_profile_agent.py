"""Profile the agent's lean runtime with cProfile: sampling rounds and publishes.

Run: ``python bench/_profile_agent.py [--duration 60] [--top 25]`` (not a benchmark: run_all
skips files starting with ``_``). Starts a Mosquitto and the agent's runtime image
(``python -m cProfile -m edgefleet.agent.run``, handed the settings the way ``edgefleet
agent`` hands them over) with every collector enabled at a 1 s interval, as in
``bench_vs_collectd.py``; the profiles restart ``--warmup`` seconds after the first message
(SIGUSR1), so the start-up is left out; SIGTERM after ``--duration`` seconds more, then prints
the top entries by internal time and by cumulative time, and the process's CPU and final RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from bench_vs_collectd import agent_settings
from benchlib import HOST, MIB, OBSERVER, THING, AgentProcess, Received, start_subscriber
from edgefleet.agent.config import HANDOVER_ENV, AgentConfig, Handover
from edgefleet.agent.settings import AgentSettings
from edgefleet.dev.broker import Mosquitto


def child(out: str) -> int:
    """Run ``edgefleet.agent.run`` as __main__ with every thread profiled; write ``out``.
    The timer is each thread's CPU time, so waiting and other load do not count."""
    import cProfile
    import runpy
    import threading

    def profiler() -> cProfile.Profile:
        return cProfile.Profile(time.thread_time)

    profiles = [profiler()]

    def start_in_thread(*_: object) -> None:
        sys.setprofile(None)
        profile = profiler()
        profiles.append(profile)
        profile.enable()

    def clear(*_: object) -> None:  # SIGUSR1: the start-up is over, keep steady state only
        for profile in profiles:
            profile.clear()

    signal.signal(signal.SIGUSR1, clear)
    if not os.environ.get("PROFILE_MAIN_ONLY"):
        threading.setprofile(start_in_thread)
    profiles[0].enable()
    try:
        runpy.run_module("edgefleet.agent.run", run_name="__main__")
    except SystemExit:
        pass
    finally:
        profiles[0].disable()
        used = []
        for profile in profiles:
            profile.create_stats()
            if profile.stats:  # a thread idle since the warm-up has none (pstats refuses it)
                used.append(profile)
        stats = pstats.Stats(*used)
        stats.dump_stats(out)
    return 0


def handover(env: dict[str, str]) -> str:
    """The handover ``edgefleet agent`` would pass, from EDGE_AGENT_* in ``env``."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("EDGE_AGENT_")})
    try:
        return Handover(AgentConfig.from_settings(AgentSettings())).to_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_child(prof: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """This script in ``--child`` mode: the agent's runtime, profiled, writing ``prof``."""
    return subprocess.Popen(
        [sys.executable, __file__, "--child", str(prof)], env=env, stdin=subprocess.DEVNULL
    )


async def run(workdir: Path, args: argparse.Namespace) -> None:
    broker = Mosquitto(workdir / "broker", host=HOST, readers=(OBSERVER,))
    broker.start()
    agent = AgentProcess(broker, workdir, **agent_settings(workdir, args.interval))
    env = {**agent.env, HANDOVER_ENV: handover(agent.env)}
    got = Received()
    subscriber = await start_subscriber(broker, got)
    prof = workdir / "agent.prof"
    proc = start_child(prof, env)
    try:
        ps = psutil.Process(proc.pid)
        await got.wait_for(lambda: got.arrivals, 30, alive=lambda: proc.poll() is None)
        await asyncio.sleep(args.warmup)
        proc.send_signal(signal.SIGUSR1)
        n0 = len(got.arrivals)
        t0, c0 = time.monotonic(), sum(ps.cpu_times()[:2])
        await asyncio.sleep(args.duration)
        cpu = 100 * (sum(ps.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
        rss = ps.memory_info().rss / MIB
        proc.terminate()
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(Exception):
            await subscriber.stop(2.0)
        broker.stop()
    print(
        f"{THING}: {len(got.arrivals) - n0} messages after the warm-up; CPU {cpu:.3f} % "
        f"(under cProfile), "
        f"RSS {rss:.1f} MiB (profiler and bench imports included)"
    )
    if args.save:
        args.save.write_bytes(prof.read_bytes())
    print("figures are CPU time of each thread (time.thread_time), all threads summed")
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(str(prof), stream=out).sort_stats(key)
        stats.print_stats(r"^(?!.*(importlib|<frozen|runpy))", args.top)
        print(out.getvalue().split("ncalls", 1)[-1].join(["   ncalls", ""]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds after the first message before the profiles restart")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help="keep the profile in this file")
    parser.add_argument("--main-only", action="store_true", help="profile the event loop only")
    args = parser.parse_args()
    if args.main_only:
        os.environ["PROFILE_MAIN_ONLY"] = "1"
    if args.child:
        return child(args.child)
    with tempfile.TemporaryDirectory(prefix="profile-agent-") as tmp:
        asyncio.run(run(Path(tmp), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
