"""Load generator for ``bench_ingest.py``: many device identities publishing paced QoS 1
metrics, in a process of its own (so that it shares no GIL with the measurement).

Not a benchmark itself (``run_all.py`` runs only ``bench_*.py``). The parent starts
:func:`generator_main` with ``multiprocessing`` (spawn) and drives it over a pipe:

- child -> parent: ``("ready", {"devices": n, "connect_s": s})`` or ``("error", text)``;
- parent -> child: ``("run", rate, seconds)``, answered by ``("done", stats)`` once every
  publish of the step has its PUBACK (or ``ack_wait_s`` passed); ``("stop",)`` ends it.
  ``t_start``/``t_end`` in the stats are ``time.monotonic()`` values, which the parent can
  compare with its own (one system-wide clock on Linux).

Every device is its own identity: its own certificate (CN = thing name, since the broker's
ACL only lets a device publish under its own name), its own :class:`MqttClient` connection,
its own stream id and a gap-free ``seq``. Messages are realistic single-sample
``MetricsMessage`` payloads: 30 metric keys of a 4-core edge box plus the agent's health,
about 1.2 KB. The payload is formatted from a per-device template (16 value variants, cycled)
instead of going through pydantic for every message: the generator must not become the
bottleneck; :func:`check_payload` validates the template with the real protocol model.

The aggregate rate is paced by a token bucket ticking every 2 ms; devices take turns, so
each publishes ``rate / devices`` messages per second. Publishes go straight to the SDK
client (``MqttClient._client.publish`` + a done-callback that counts the PUBACK) instead of
``await MqttClient.publish``, which would add an asyncio task, a ``wrap_future`` and a
cross-thread wake-up per message to a generator that shares the cores with everything it
measures. The shared counters
(``sent, acked, failed, refused``) let the parent watch progress live.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TICK_S = 0.002
BURST_S = 0.25  # the bucket holds at most this many seconds of tokens (scheduling hiccups)
VARIANTS = 16
AGENT_VERSION = "0.1.0"
SENT, ACKED, FAILED, REFUSED = range(4)


@dataclass(frozen=True, slots=True)
class Device:
    """One identity: thing name and its certificate and key files."""

    name: str
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class GenConfig:
    """Everything the child needs (picklable: it crosses the spawn boundary)."""

    host: str
    port: int
    ca: str
    devices: tuple[Device, ...]
    seed: int = 1
    max_outstanding: int = 20_000  # publishes without PUBACK before the bucket pauses
    ack_wait_s: float = 15.0
    connect_timeout_s: float = 90.0


# --- payloads ---------------------------------------------------------------------------------


def _metrics(rng: random.Random, ts: float) -> dict[str, float]:
    """30 keys as the agent's collectors name them, values well below every alert rule."""
    gib = 1024**3
    cores = [round(rng.uniform(2, 60), 1) for _ in range(4)]
    mem_total, disk_total = 4 * gib, 64 * gib
    mem_used = rng.uniform(30, 70)
    disk_used = rng.uniform(20, 70)
    load1 = rng.uniform(0.1, 3.0)
    out: dict[str, float] = {
        "cpu.percent": round(sum(cores) / 4, 1),
        "cpu.iowait_percent": round(rng.uniform(0, 3), 1),
    }
    out.update({f"cpu.core_percent[{i}]": v for i, v in enumerate(cores)})
    out.update({
        "load.load1": round(load1, 2),
        "load.load5": round(load1 * 0.9, 2),
        "load.load15": round(load1 * 0.8, 2),
        "memory.total_bytes": float(mem_total),
        "memory.available_bytes": float(int(mem_total * (1 - mem_used / 100))),
        "memory.used_percent": round(mem_used, 1),
        "swap.total_bytes": float(2 * gib),
        "swap.used_percent": round(rng.uniform(0, 20), 1),
        "disk.total_bytes[/]": float(disk_total),
        "disk.free_bytes[/]": float(int(disk_total * (1 - disk_used / 100))),
        "disk.used_percent[/]": round(disk_used, 1),
        "disk.inodes_used_percent[/]": round(rng.uniform(5, 30), 1),
        "diskio.read_bytes_per_s[mmcblk0]": round(rng.uniform(0, 2e6), 1),
        "diskio.write_bytes_per_s[mmcblk0]": round(rng.uniform(0, 4e6), 1),
        "diskio.read_ops_per_s[mmcblk0]": round(rng.uniform(0, 200), 1),
        "diskio.write_ops_per_s[mmcblk0]": round(rng.uniform(0, 400), 1),
        "net.rx_bytes_per_s[eth0]": round(rng.uniform(1e3, 5e5), 1),
        "net.tx_bytes_per_s[eth0]": round(rng.uniform(1e3, 2e5), 1),
        "net.rx_packets_per_s[eth0]": round(rng.uniform(5, 800), 1),
        "net.tx_packets_per_s[eth0]": round(rng.uniform(5, 600), 1),
        "net.rx_errors_per_s[eth0]": 0.0,
        "net.tx_errors_per_s[eth0]": 0.0,
        "temp.celsius[cpu_thermal/temp1]": round(rng.uniform(40, 65), 1),
        "uptime.seconds": round(ts - rng.uniform(3600, 9e5), 1),
    })
    return out


class Payloads:
    """Single-sample MetricsMessage bytes for one device, cheap to make per message."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.stream = f"{rng.getrandbits(64):016x}"
        now = time.time()
        self._bodies = [
            json.dumps(_metrics(rng, now), separators=(",", ":")) for _ in range(VARIANTS)
        ]
        rss = rng.randint(40, 50) * 1024 * 1024
        self._health = json.dumps({
            "queue_depth": 0, "queue_bytes": 0, "oldest_age_s": 0.0, "dropped_total": 0,
            "publish_errors_total": 0, "rss_bytes": rss, "agent_version": AGENT_VERSION,
        }, separators=(",", ":"))
        self._head = f'{{"v":1,"device_id":"{name}","stream":"{self.stream}","sent_at":'

    def make(self, seq: int, ts: float) -> bytes:
        body = self._bodies[seq % VARIANTS]
        return (
            f'{self._head}{ts:.3f},"samples":[{{"seq":{seq},"ts":{ts - 0.05:.3f},'
            f'"metrics":{body}}}],"health":{self._health}}}'
        ).encode()


def check_payload(payload: bytes, name: str) -> int:
    """Decode one payload with the real protocol model; return its metric key count."""
    from edgefleet.wire.messages import MetricsMessage, decode, metrics_topic

    msg = decode(metrics_topic(name), payload)
    assert isinstance(msg, MetricsMessage)
    return len(msg.samples[0].metrics)


# --- the child process ------------------------------------------------------------------------


class _Counters:
    """PUBACK outcomes, counted on the SDK's threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked = self.failed = self.refused = 0

    def done(self, fut: Any) -> None:
        try:
            result = fut.result()
        except Exception:
            with self.lock:
                self.failed += 1
            return
        puback = getattr(result, "puback", None)
        code = int(puback.reason_code) if puback is not None else 0
        with self.lock:
            if code >= 128:
                self.refused += 1
            else:
                self.acked += 1


class _Generator:
    def __init__(self, cfg: GenConfig, shared: Any) -> None:
        from awscrt import mqtt5

        self.cfg = cfg
        self.shared = shared
        self.counts = _Counters()
        self.sent = 0
        self.clients: list[Any] = []
        self._qos1 = mqtt5.QoS.AT_LEAST_ONCE
        self._packet = mqtt5.PublishPacket
        rng = random.Random(cfg.seed)
        self.payloads = [Payloads(d.name, rng) for d in cfg.devices]
        self.topics = [f"dt/edgefleet/{d.name}/metrics" for d in cfg.devices]
        self.seqs = [0] * len(cfg.devices)
        self.turn = 0

    async def connect(self) -> float:
        from edgefleet.transport.mqtt import MqttClient, MqttConfig

        started = time.monotonic()
        for dev in self.cfg.devices:
            mc = MqttConfig(
                endpoint=self.cfg.host, port=self.cfg.port, cert_file=Path(dev.cert),
                key_file=Path(dev.key), ca_file=Path(self.cfg.ca), client_id=dev.name,
                aws_limits=False, min_reconnect_ms=200, max_reconnect_ms=2000,
            )
            client = MqttClient(mc)
            self.clients.append(client)
            client.start()
        waits = [c.connected.wait() for c in self.clients]
        await asyncio.wait_for(asyncio.gather(*waits), self.cfg.connect_timeout_s)
        return time.monotonic() - started

    def _sync(self) -> None:
        c = self.counts
        self.shared[SENT] = self.sent
        self.shared[ACKED], self.shared[FAILED], self.shared[REFUSED] = (
            c.acked, c.failed, c.refused)

    def outstanding(self) -> int:
        c = self.counts
        return self.sent - c.acked - c.failed - c.refused

    def _publish(self, n: int) -> None:
        ts = time.time()
        clients, payloads, topics, seqs = self.clients, self.payloads, self.topics, self.seqs
        count, turn, done = len(clients), self.turn, self.counts.done
        packet, qos1 = self._packet, self._qos1
        for _ in range(n):
            seq = seqs[turn]
            seqs[turn] = seq + 1
            fut = clients[turn]._client.publish(  # hot path: see the module docstring
                packet(topic=topics[turn], payload=payloads[turn].make(seq, ts), qos=qos1))
            fut.add_done_callback(done)
            turn = turn + 1 if turn + 1 < count else 0
        self.turn = turn
        self.sent += n

    async def run(self, rate: float, seconds: float) -> dict[str, Any]:
        """Publish at ``rate`` msgs/s for ``seconds``, then wait for the PUBACKs."""
        sent0, c = self.sent, self.counts
        acked0, failed0, refused0 = c.acked, c.failed, c.refused
        burst = max(1.0, rate * BURST_S)
        tokens, dropped_tokens, stalled = 0.0, 0.0, 0
        start = last = time.monotonic()
        end = start + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                break
            tokens += rate * (now - last)
            last = now
            if tokens > burst:
                dropped_tokens += tokens - burst
                tokens = burst
            n = int(tokens)
            if n and self.outstanding() > self.cfg.max_outstanding:
                stalled += 1
            elif n:
                tokens -= n
                self._publish(n)
            self._sync()
            await asyncio.sleep(TICK_S)
        stop = time.monotonic()
        published_s = stop - start
        deadline = time.monotonic() + self.cfg.ack_wait_s
        while self.outstanding() > 0 and time.monotonic() < deadline:
            self._sync()
            await asyncio.sleep(0.01)
        self._sync()
        sent = self.sent - sent0
        return {
            "target": rate, "t_start": start, "t_end": stop, "seconds": published_s,
            "sent": sent,
            "rate": sent / published_s if published_s > 0 else 0.0,
            "acked": c.acked - acked0, "failed": c.failed - failed0,
            "refused": c.refused - refused0, "unacked": self.outstanding(),
            "acks_done_s": time.monotonic() - stop,
            "dropped_tokens": round(dropped_tokens), "stalled_ticks": stalled,
        }

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop(3.0) for c in self.clients), return_exceptions=True)


async def _serve(conn: Any, cfg: GenConfig, shared: Any) -> None:
    gen = _Generator(cfg, shared)
    try:
        try:
            check_payload(gen.payloads[0].make(0, time.time()), cfg.devices[0].name)
            connect_s = await gen.connect()
        except Exception:
            conn.send(("error", traceback.format_exc()))
            return
        conn.send(("ready", {"devices": len(gen.clients), "connect_s": connect_s}))
        while True:
            cmd = await asyncio.to_thread(conn.recv)
            if cmd[0] == "run":
                conn.send(("done", await gen.run(float(cmd[1]), float(cmd[2]))))
            else:
                break
    finally:
        await gen.stop()


def generator_main(conn: Any, cfg: GenConfig, shared: Any) -> None:
    """Entry point of the generator process."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt, EOFError, BrokenPipeError):
        asyncio.run(_serve(conn, cfg, shared))
