"""The agent next to collectd 5.12: CPU and RSS, same families, same interval, same broker.

Run: ``python bench/bench_vs_collectd.py [--duration 60] [--interval 1] [--warmup 5]
[--runs 3]``.
Needs Debian's collectd and the library of its mqtt plugin (``apt-get install
--no-install-recommends collectd-core libmosquitto1``, which ``scripts/setup.sh`` does);
without collectd the script says so and exits 2.

One Mosquitto on 127.0.0.1 (mTLS, the ACL of the fleet plus ``collectd/#`` for collectd's
identity). In the same run, side by side:

- **collectd** (``collectd -f``) with cpu, load, memory, swap, df, disk, interface, thermal
  (when ``/sys/class/thermal`` has zones), processes (the same named processes as the
  agent) and uptime at the same interval, publishing every value list over MQTT with mTLS
  (``CACert``/``CertificateFile``/``CertificateKeyFile``), QoS 1 like the agent;
- **the agent** (``python -m edgefleet agent``) with every collector enabled: the psutil
  families, processes, textfile (one file), exec (``cat`` of a file every 10 s; a fork per
  round would measure fork, not the agent), vitals, systemd (idle where systemd is not PID
  1, as here), with the production settings (AWS limits on, delivery auto).

After a warm-up that excludes the start, both processes' CPU time (all threads, also those
that ended, from each process's CPU-time clock in nanoseconds) over the window divided by
wall time, in % of one core; RSS sampled twice a second (maximum and final). A subscriber
counts what each one delivered. ``--runs`` windows, each with fresh processes and broker;
the figures reported are the median run's (by CPU ratio), every run is printed. Targets
(issue 21): agent CPU <= 0.5 x collectd's, agent RSS <= 30 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchlib import (
    HOST,
    MIB,
    OBSERVER,
    AgentProcess,
    Received,
    exit_on_sigterm,
    figure,
    print_machine,
    print_result,
    start_subscriber,
)
from edgefleet.common.logs import setup_logging
from edgefleet.dev.broker import Mosquitto
from edgefleet.transport.mqtt import MqttClient, MqttConfig

COLLECTD = "collectd-1"
COLLECTD_PREFIX = "collectd"
CPU_RATIO_TARGET = 0.5
RSS_TARGET_MIB = 30.0
PROCESSES = ("mosquitto", "collectd")


class Broker(Mosquitto):
    """The fleet's broker, where collectd's identity may also publish under ``collectd/``."""

    def prepare(self) -> None:
        super().prepare()
        with (self.workdir / "acl").open("a") as acl:
            acl.write(f"\nuser {COLLECTD}\ntopic write {COLLECTD_PREFIX}/#\n")
            acl.write(f"\nuser {OBSERVER}\ntopic read {COLLECTD_PREFIX}/#\n")


def collectd_conf(broker: Mosquitto, interval: float, log: Path) -> str:
    """collectd.conf with the agent's families, publishing over MQTT with mTLS."""
    cert, key, ca = broker.identity(COLLECTD)
    plugins = ["cpu", "load", "memory", "swap", "df", "disk", "interface", "processes",
               "uptime"]  # fmt: skip
    if any(Path("/sys/class/thermal").glob("thermal_zone*")):
        plugins.append("thermal")
    lines = [
        f'Hostname "{COLLECTD}"', "FQDNLookup false", f"Interval {interval}",
        "LoadPlugin logfile", "<Plugin logfile>", "  LogLevel warning", f'  File "{log}"',
        "</Plugin>",
        *(f"LoadPlugin {p}" for p in [*plugins, "mqtt"]),
        "<Plugin cpu>", "  ReportByCpu true", "  ValuesPercentage true", "</Plugin>",
        "<Plugin df>", "  IgnoreSelected false", "  ValuesPercentage true", "</Plugin>",
        "<Plugin processes>", *(f'  Process "{p}"' for p in PROCESSES), "</Plugin>",
        "<Plugin mqtt>", '  <Publish "bench">', f'    Host "{HOST}"', f"    Port {broker.port}",
        f'    ClientId "{COLLECTD}"', f'    Prefix "{COLLECTD_PREFIX}"', "    QoS 1",
        f'    CACert "{ca}"', f'    CertificateFile "{cert}"', f'    CertificateKeyFile "{key}"',
        "  </Publish>", "</Plugin>",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


class CollectdCount:
    """collectd's messages as the observer identity hears them on ``collectd/#``."""

    def __init__(self) -> None:
        self.messages = 0

    def on_message(self, topic: str, payload: bytes) -> None:
        del topic, payload
        self.messages += 1


async def count_collectd(broker: Mosquitto, count: CollectdCount) -> MqttClient:
    """A subscriber as ``OBSERVER`` to collectd's topics."""
    cert, key, ca = broker.identity(OBSERVER)
    cfg = MqttConfig(
        endpoint=HOST, port=broker.port, cert_file=cert, key_file=key, ca_file=ca,
        client_id=OBSERVER, aws_limits=False, min_reconnect_ms=100, max_reconnect_ms=1000,
    )  # fmt: skip
    client = MqttClient(cfg, on_message=count.on_message)
    client.start()
    await asyncio.wait_for(client.connected.wait(), 15)
    await client.subscribe([f"{COLLECTD_PREFIX}/#"])
    return client


def start_collectd(binary: str, conf: Path, err: Path) -> subprocess.Popen[bytes]:
    """``collectd -f -C conf`` (foreground: it stays our child)."""
    with err.open("wb") as sink:
        return subprocess.Popen(
            [binary, "-f", "-C", str(conf)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=sink,
        )  # fmt: skip


def _cpu_clock(pid: int) -> int | None:
    """The process's CPU-time clock (``clock_getcpuclockid``), None where there is none."""
    try:
        libc = ctypes.CDLL(None)
        clock = ctypes.c_int()
        if libc.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
            return None
        time.clock_gettime(clock.value)
    except (OSError, AttributeError):
        return None
    return clock.value


class Measured:
    """CPU time and RSS of one process (all threads, also those that ended)."""

    def __init__(self, pid: int) -> None:
        self.ps = psutil.Process(pid)
        self.rss_max = 0
        self.cpu0 = 0.0
        self._clock = _cpu_clock(pid)

    def cpu(self) -> float:
        """CPU seconds so far: from the kernel's CPU-time clock of the process (nanoseconds;
        the user and system ticks of ``/proc/<pid>/stat`` move in 10 ms steps, 0.017 % of a
        60 s window, which is 7 % of the agent's figure), else from the ticks."""
        if self._clock is not None:
            with contextlib.suppress(OSError):
                return time.clock_gettime(self._clock)
        t = self.ps.cpu_times()
        return t.user + t.system

    def threads(self) -> dict[int, tuple[str, int]]:
        """Per thread: its name (``comm``) and CPU ticks (user + system) so far."""
        out: dict[int, tuple[str, int]] = {}
        for task in Path(f"/proc/{self.ps.pid}/task").iterdir():
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue  # the thread ended meanwhile
            head, _, tail = stat.rpartition(")")
            fields = tail.split()
            out[int(task.name)] = (head.partition("(")[2], int(fields[11]) + int(fields[12]))
        return out

    def sample_rss(self) -> int:
        rss = int(self.ps.memory_info().rss)
        self.rss_max = max(self.rss_max, rss)
        return rss


def agent_settings(workdir: Path, interval: float) -> dict[str, Any]:
    """Every collector on, with something to read for the textfile and exec ones."""
    textfiles = workdir / "textfile"
    textfiles.mkdir()
    (textfiles / "app.prom").write_text('app_jobs_done 12\napp_queue_depth{queue="a"} 3\n')
    (workdir / "exec.prom").write_text("app_temperature_c 41.5\n")
    return {
        "interval_s": interval, "processes": ",".join(PROCESSES), "systemd_units": "ssh.service",
        "textfile_dir": textfiles, "exec_command": f"cat {workdir / 'exec.prom'}",
        "exec_interval_s": 10,
    }  # fmt: skip


async def one_run(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """collectd and the agent side by side against one broker; their figures."""
    broker = Broker(workdir / "broker", host=HOST, readers=(OBSERVER,))
    broker.start()
    collectd: subprocess.Popen[bytes] | None = None
    settings = agent_settings(workdir, args.interval)
    if args.collectors:  # a subset, to split the agent's cost (the comparison needs all)
        settings["collectors"] = args.collectors
    agent = AgentProcess(broker, workdir, **settings)
    got, heard = Received(), CollectdCount()
    subscriber = await start_subscriber(broker, got)
    counter = await count_collectd(broker, heard)
    try:
        conf = workdir / "collectd.conf"
        conf.write_text(collectd_conf(broker, args.interval, workdir / "collectd.log"))
        collectd = start_collectd(args.collectd, conf, workdir / "collectd.err")
        agent.start()
        assert agent.proc is not None
        procs = {"collectd": Measured(collectd.pid), "agent": Measured(agent.proc.pid)}
        if not await got.wait_for(lambda: got.arrivals, 30, alive=lambda: agent.alive):
            raise RuntimeError(f"agent sent nothing in 30 s:\n{agent.log_tail()}")
        await asyncio.sleep(max(0.0, agent.started_at + args.warmup - time.monotonic()))
        for m in procs.values():
            m.cpu0 = m.cpu()
        threads0 = procs["agent"].threads()
        msgs0, heard0 = len(got.arrivals), heard.messages
        wall0 = time.monotonic()
        while (left := wall0 + args.duration - time.monotonic()) > 0:
            if collectd.poll() is not None or not agent.alive:
                raise RuntimeError(
                    f"a process exited: collectd {collectd.poll()}, agent "
                    f"{agent.log_tail()}\n{_tail(workdir / 'collectd.log')}"
                )
            for m in procs.values():
                m.sample_rss()
            await asyncio.sleep(min(0.5, left))
        wall = time.monotonic() - wall0
        out: dict[str, Any] = {"wall_s": wall}
        for name, m in procs.items():
            out[f"{name}_cpu"] = 100.0 * (m.cpu() - m.cpu0) / wall
            out[f"{name}_rss"] = m.sample_rss()
            out[f"{name}_rss_max"] = m.rss_max
        out["agent_threads"] = thread_cpu(threads0, procs["agent"].threads(), wall)
        out["agent_msgs"] = len(got.arrivals) - msgs0
        out["collectd_msgs"] = heard.messages - heard0
        return out
    finally:
        agent.stop()
        if collectd is not None and collectd.poll() is None:
            collectd.terminate()
            collectd.wait(10)
        for client in (subscriber, counter):
            with contextlib.suppress(Exception):
                await client.stop(2.0)
        broker.stop()


def thread_cpu(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], wall: float
) -> list[tuple[int, str, float]]:
    """Each thread's CPU over the window in % of one core (threads started in it count
    from 0; those that ended in it are missing), busiest first."""
    tick = os.sysconf("SC_CLK_TCK")
    rows = [
        (tid, name, 100.0 * (ticks - before.get(tid, (name, 0))[1]) / tick / wall)
        for tid, (name, ticks) in after.items()
    ]
    return sorted(rows, key=lambda row: -row[2])


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-1500:]
    except OSError:
        return ""


def report(r: dict[str, Any]) -> list[dict[str, Any]]:
    ratio = r["agent_cpu"] / r["collectd_cpu"] if r["collectd_cpu"] > 0 else float("inf")
    rss = r["agent_rss_max"] / MIB
    print(f"window     {r['wall_s']:.1f} s")
    for name in ("collectd", "agent"):
        print(f"{name:<10} CPU {r[f'{name}_cpu']:.3f} % of one core, RSS max "
              f"{r[f'{name}_rss_max'] / MIB:.1f} MiB (final {r[f'{name}_rss'] / MIB:.1f}), "
              f"{r[f'{name}_msgs']} messages")  # fmt: skip
    for tid, name, share in r["agent_threads"]:
        print(f"  agent thread {tid:<8} {name:<16} {share:.3f} %")
    print(
        f"ratio      agent/collectd CPU {ratio:.2f}, RSS "
        f"{r['agent_rss_max'] / max(r['collectd_rss_max'], 1):.2f}"
    )
    return [
        figure("collectd CPU", round(r["collectd_cpu"], 3), "% of one core"),
        figure("agent CPU", round(r["agent_cpu"], 3), "% of one core"),
        figure("agent/collectd CPU", round(ratio, 2), "x", f"<= {CPU_RATIO_TARGET}",
               ratio <= CPU_RATIO_TARGET),
        figure("collectd RSS max", round(r["collectd_rss_max"] / MIB, 1), "MiB"),
        figure("agent RSS max", round(rss, 1), "MiB", f"<= {RSS_TARGET_MIB:.0f}",
               rss <= RSS_TARGET_MIB),
        figure("agent/collectd RSS", round(r["agent_rss_max"] / max(r["collectd_rss_max"], 1), 2),
               "x"),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--collectors", default="", help="agent collectors (default: all)")
    parser.add_argument("--collectd", default=shutil.which("collectd") or "/usr/sbin/collectd")
    parser.add_argument("--runs", type=int, default=3, help="windows; the median is reported")
    args = parser.parse_args()
    if not Path(args.collectd).exists():
        print("collectd is not installed: apt-get install collectd-core libmosquitto1")
        return 2
    exit_on_sigterm()
    setup_logging("WARNING")
    print_machine()
    version = subprocess.run([args.collectd, "-h"], capture_output=True, text=True, check=False)
    found = re.search(r"collectd (\d+\.\d+[\w.]*)", version.stdout)
    print(f"collectd  {found.group(1) if found else '?'}")
    runs: list[dict[str, Any]] = []
    for number in range(1, max(1, args.runs) + 1):
        with tempfile.TemporaryDirectory(prefix="bench-collectd-") as tmp:
            runs.append(asyncio.run(one_run(Path(tmp), args)))
        r = runs[-1]
        print(f"run {number}    collectd {r['collectd_cpu']:.3f} %, agent {r['agent_cpu']:.3f} %, "
              f"ratio {r['agent_cpu'] / max(r['collectd_cpu'], 1e-9):.2f}", flush=True)
    runs.sort(key=lambda r: r["agent_cpu"] / max(r["collectd_cpu"], 1e-9))
    print(f"median of {len(runs)} runs (by ratio):")
    figures = report(runs[len(runs) // 2])
    print_result("vs_collectd", figures, duration_s=args.duration, interval_s=args.interval,
                 runs=len(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
