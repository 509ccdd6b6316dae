"""Backend cost of one device inventing metric names: RSS and CPU against distinct names.

Run: ``python bench/bench_cardinality.py [--messages 400] [--keys 500] [--rate 40]``
(about 2 minutes).

Starts a Mosquitto on 127.0.0.1 (temp folder, mTLS, the fleet ACL) and the real backend
process (``python -m edgefleet backend``, a temp SQLite file, default cardinality bounds).
Two devices publish in turn, each from its own identity and connection, ``--messages``
single-sample messages of ``--keys`` metric keys at ``--rate`` messages/s:

1. **reference** (``bench-ok``): the same ``--keys`` names in every message (a large but
   honest device: 100 instances in each of five families, within the default bounds);
2. **hostile** (``bench-evil``): ``--keys`` NEW names in every message, half of them above
   the shipped disk alert threshold, so that every name also reaches the alert engine:
   ``--messages x --keys`` distinct names in all (200,000 by default).

After every ``--messages / 8`` messages of each device, once the backend has handled them
all (``edgefleet_ingest_messages_total``), the backend's RSS and its CPU time since the last
checkpoint are read (``psutil``). After each phase the backend idles ``--idle-s`` seconds
and its CPU is measured again (on the main of 2026-11-27, a flood of names left it busy at
62 % of a core while idle). Finally ``/api/devices`` must answer, and the time it takes is
reported (API stalls of 14 s were seen).

Figures: RSS after the reference phase and after each checkpoint of the hostile phase, the
RSS growth over the hostile phase's second half (flat at the bound: the target is under
16 MiB for 100,000 more names), backend CPU per message in both phases and idle CPU after
each; the refused-key counter the backend reports by reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench_ingest import Backend
from benchlib import HOST, MIB, exit_on_sigterm, figure, print_machine, print_result
from edgefleet.common.logs import setup_logging
from edgefleet.dev.broker import Mosquitto
from edgefleet.transport.mqtt import MqttClient, MqttConfig
from edgefleet.wire.messages import metrics_topic

CHECKPOINTS = 8
FLAT_TARGET_MIB = 16.0


HONEST_FAMILIES = ("disk.used_percent", "disk.inodes_used_percent", "net.rx_bytes_per_s",
                   "net.tx_bytes_per_s", "temp.celsius")


def honest_names(count: int) -> list[str]:
    """``count`` names of a large but honest device, within the default bounds: spread over
    five families (at most 100 instances each at the default 500)."""
    per = -(-count // len(HONEST_FAMILIES))
    names = [f"{fam}[i{i}]" for fam in HONEST_FAMILIES for i in range(per)]
    return names[:count]


def payload(device: str, seq: int, names: list[str], values: list[float]) -> bytes:
    """One single-sample MetricsMessage, formatted directly (the keys are plain ASCII)."""
    now = time.time()
    metrics = dict(zip(names, values, strict=True))
    doc = {"v": 1, "device_id": device, "stream": f"{device}-s", "sent_at": now,
           "samples": [{"seq": seq, "ts": now, "metrics": metrics}]}
    return json.dumps(doc, separators=(",", ":")).encode()


async def connect(broker: Mosquitto, name: str) -> MqttClient:
    cert, key, ca = broker.identity(name)
    client = MqttClient(MqttConfig(
        endpoint=HOST, port=broker.port, cert_file=cert, key_file=key, ca_file=ca,
        client_id=name, aws_limits=False,
    ))
    client.start()
    await asyncio.wait_for(client.connected.wait(), 15)
    return client


class Phase:
    """One device's run: publish, wait until handled, measure at checkpoints."""

    def __init__(self, backend: Backend, args: argparse.Namespace, handled_before: float) -> None:
        self.backend = backend
        self.args = args
        self.handled = handled_before
        self.rows: list[dict[str, Any]] = []
        self.cpu_s = 0.0

    async def run(self, client: MqttClient, device: str, hostile: bool) -> None:
        args = self.args
        every = max(1, args.messages // CHECKPOINTS)
        ps = self.backend.ps
        assert ps is not None
        cpu0 = _cpu(ps)
        honest = honest_names(args.keys)
        for seq in range(args.messages):
            if hostile:
                base = seq * args.keys
                names = [f"disk.used_percent[/x/{base + i}]" for i in range(args.keys)]
                values = [97.0 if i % 2 else 40.0 for i in range(args.keys)]
            else:
                names, values = honest, [40.0 + (seq % 7)] * args.keys
            code = await client.publish(metrics_topic(device), payload(device, seq, names, values))
            if code >= 128:
                raise RuntimeError(f"publish refused: reason code {code}")
            self.handled += 1
            await asyncio.sleep(1.0 / args.rate)
            if (seq + 1) % every == 0:
                await self.checkpoint((seq + 1) * args.keys if hostile else args.keys, seq + 1)
        self.cpu_s = _cpu(ps) - cpu0

    async def checkpoint(self, names: int, messages: int) -> None:
        await asyncio.to_thread(self.backend_caught_up)
        ps = self.backend.ps
        assert ps is not None
        rss = ps.memory_info().rss / MIB
        self.rows.append({"messages": messages, "names": names, "rss_mib": round(rss, 1)})
        print(f"  {messages:6d} messages  {names:8d} names  RSS {rss:7.1f} MiB", flush=True)

    def backend_caught_up(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.backend.metrics().get("edgefleet_ingest_messages_total", 0) >= self.handled:
                return
            time.sleep(0.2)
        raise TimeoutError(f"backend did not handle {self.handled} messages in {timeout}s")


def _cpu(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return float(t.user + t.system)


def idle_cpu(backend: Backend, seconds: float) -> float:
    """% of one core the backend uses while no device publishes."""
    ps = backend.ps
    assert ps is not None
    c0, t0 = _cpu(ps), time.monotonic()
    time.sleep(seconds)
    return 100.0 * (_cpu(ps) - c0) / (time.monotonic() - t0)


def api_seconds(backend: Backend) -> float:
    started = time.monotonic()
    url = f"http://{HOST}:{backend.http_port}/api/devices"
    with urllib.request.urlopen(url, timeout=120) as resp:
        resp.read()
    return time.monotonic() - started


def refused(metrics: dict[str, float]) -> dict[str, float]:
    """Every counter of refused keys or messages, by its label."""
    return {k: v for k, v in metrics.items()
            if ("refused" in k or "rejected" in k) and v}


async def run(args: argparse.Namespace, workdir: Path) -> None:
    with Mosquitto(workdir / "broker", host=HOST) as broker:
        backend = Backend(broker, workdir)
        backend.start()
        try:
            await asyncio.to_thread(backend.wait_ready)
            ps = backend.ps
            assert ps is not None
            rss_start = ps.memory_info().rss / MIB
            ok, evil = await connect(broker, "bench-ok"), await connect(broker, "bench-evil")
            print("reference: the same names in every message")
            ref = Phase(backend, args, 0)
            await ref.run(ok, "bench-ok", hostile=False)
            ref_idle = await asyncio.to_thread(idle_cpu, backend, args.idle_s)
            print(f"  idle CPU after: {ref_idle:.1f} % of one core")
            print("hostile: new names in every message")
            bad = Phase(backend, args, ref.handled)
            await bad.run(evil, "bench-evil", hostile=True)
            bad_idle = await asyncio.to_thread(idle_cpu, backend, args.idle_s)
            print(f"  idle CPU after: {bad_idle:.1f} % of one core")
            api_s = await asyncio.to_thread(api_seconds, backend)
            counts = refused(backend.metrics())
            await ok.stop()
            await evil.stop()
            report(args, rss_start=rss_start, ref=ref, bad=bad, ref_idle=ref_idle,
                   bad_idle=bad_idle, api_s=api_s, counts=counts)
        finally:
            backend.stop()


def report(args: argparse.Namespace, *, rss_start: float, ref: Phase, bad: Phase,
           ref_idle: float, bad_idle: float, api_s: float, counts: dict[str, float]) -> None:
    rss_ref = ref.rows[-1]["rss_mib"]
    half = bad.rows[len(bad.rows) // 2 - 1]
    last = bad.rows[-1]
    growth = last["rss_mib"] - half["rss_mib"]
    more = last["names"] - half["names"]
    ms_ref = 1000.0 * ref.cpu_s / args.messages
    ms_bad = 1000.0 * bad.cpu_s / args.messages
    idle_bound = max(2.0, 2 * ref_idle)
    print(f"RSS at start {rss_start:.1f} MiB, after reference {rss_ref:.1f} MiB, "
          f"after {last['names']} hostile names {last['rss_mib']:.1f} MiB")
    print(f"RSS growth over the last {more} names: {growth:.1f} MiB")
    print(f"backend CPU per message: reference {ms_ref:.1f} ms, hostile {ms_bad:.1f} ms")
    print(f"/api/devices after the flood: {api_s * 1000:.0f} ms")
    print(f"refusals: {counts}")
    print_result("bench_cardinality", [
        figure("backend RSS after the reference device", rss_ref, "MiB"),
        figure(f"backend RSS after {last['names']:,} hostile names", last["rss_mib"], "MiB"),
        figure(f"RSS growth over the last {more:,} hostile names", round(growth, 1), "MiB",
               f"< {FLAT_TARGET_MIB:g} MiB", growth < FLAT_TARGET_MIB),
        figure("backend CPU per message, reference", round(ms_ref, 2), "ms"),
        figure("backend CPU per message, hostile", round(ms_bad, 2), "ms"),
        figure("backend idle CPU after the reference", round(ref_idle, 1), "% of one core"),
        figure("backend idle CPU after the flood", round(bad_idle, 1), "% of one core",
               f"< {idle_bound:.1f} % (2x reference, at least 2 %)", bad_idle < idle_bound),
        figure("/api/devices after the flood", round(api_s * 1000), "ms"),
    ], checkpoints={"reference": ref.rows, "hostile": bad.rows}, refusals=counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--keys", type=int, default=500, help="metric keys per message")
    parser.add_argument("--rate", type=float, default=40.0, help="messages/s per device")
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()
    setup_logging("WARNING")
    exit_on_sigterm()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="bench-card-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main())
